//! One task per connection: read, decode, dispatch, encode, write.
//!
//! All complete requests in the input are decoded and dispatched before any
//! reply is awaited, so the requests of a pipelined batch reach their owner
//! shards together; their responses are then encoded in request order and
//! written with one write.
//!
//! Deadlines cost nothing per read: the connection records its phase and
//! deadline in the core's registry, and the core's ticker cuts the read side
//! of a connection whose deadline passed (`shutdown(SHUT_RD)`), which ends
//! the pending read with end-of-file.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::api::{dispatch, kv_response, Dispatched, Step};
use crate::core::{unix_ms, Core, Phase};
use crate::http::codec::{Decoded, Decoder, Method, Request};
use crate::http::response::{encode, Framing, Persistence, RateHeaders, Response, CONTINUE};
use crate::limit::LeaseWait;
use crate::mesh::Answer;
use crate::metrics::Route;

/// Initial size of a connection's input and output buffers; they grow for a
/// large request or response and shrink back after it.
pub const BUFFER_BYTES: usize = 4096;
/// Buffers above this are shrunk back once empty.
const BUFFER_BYTES_KEPT_MAX: usize = 64 * 1024;
/// Pipelined requests handled per batch before writing.
pub const PIPELINE_BATCH_MAX: usize = 64;
/// Output bytes per batch before writing.
const OUTPUT_BATCH_BYTES_MAX: usize = 256 * 1024;
/// After an error response: how long and how much to keep reading so the
/// client sees the response instead of a reset (nginx's lingering close).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// What encoding and counting a response needs to know of its request.
#[derive(Clone, Copy)]
struct Meta {
    route: Route,
    head_only: bool,
    persistence: Persistence,
    rate: Option<RateHeaders>,
}

/// A dispatched request whose response is not yet encoded.
struct Pending {
    step: Step,
    meta: Meta,
}

/// Serves one connection until it closes, then removes it from the registry.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream, conn_key: usize) {
    let lingering = run(&core, &mut stream, conn_key).await;
    if lingering {
        linger(&mut stream).await;
    }
    let mut conns = core.conns.borrow_mut();
    conns.remove(conn_key);
    core.metrics().connections(conns.len());
}

/// Runs the request loop. Returns true when the connection closes after an
/// error response and should linger.
async fn run(core: &Rc<Core>, stream: &mut TcpStream, conn_key: usize) -> bool {
    let limits = core.config.limits;
    let input_bytes_max = limits.head_bytes_max + 2 * limits.body_bytes_max + BUFFER_BYTES;
    let mut decoder = Decoder::new(limits);
    let mut input: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut batch: Vec<Pending> = Vec::with_capacity(PIPELINE_BATCH_MAX);
    let peer = stream.peer_addr().ok().map(|address| address.ip());
    loop {
        let started = Instant::now();
        let now = SystemTime::now();
        core.date.borrow_mut().refresh(now);
        core.now_ms.set(unix_ms(now));
        set_phase(core, conn_key, Phase::Busy, 0);
        let mut outcome = {
            let _busy = core.metrics_all.heartbeats.busy(core.id, &core.metrics_all);
            decode_batch(core, &mut decoder, &input, peer, unix_ms(now), &mut batch, &mut output)
        };
        let mut close = outcome.close || core.shutting_down.get();
        for pending in batch.drain(..) {
            let response = match pending.step {
                Step::Ready(response) => response,
                Step::Remote { reply, owner } => match reply.await {
                    Answer::Kv(Ok(outcome)) => kv_response(outcome, owner, core.shard_count()),
                    Answer::Kv(Err(refusal)) => Response { shard: Some((owner, core.shard_count())), ..refusal },
                    Answer::Lease(_) | Answer::Gateway(_) => unreachable!("a key-value op is answered with an outcome"),
                },
                Step::Durable { wait, response } => {
                    wait.await;
                    response
                }
                Step::Disk { read, owner } => match read.await {
                    Ok(outcome) => kv_response(outcome, owner, core.shard_count()),
                    Err(refusal) => Response { shard: Some((owner, core.shard_count())), ..refusal },
                },
                Step::Gateway(relay) => relay.await,
                Step::Wait(_) => unreachable!("a request waiting for a lease is not in the batch"),
            };
            close |= write_response(core, &mut output, &response, &pending.meta);
        }
        if outcome.requests > 0 {
            core.metrics().duration(started.elapsed().as_micros() as u64, outcome.requests as u64);
        }
        let (consumed, error) = (outcome.consumed, outcome.error);
        input.drain(..consumed);
        if decoder.take_continue() {
            output.extend_from_slice(CONTINUE);
        }
        if !output.is_empty() {
            let (result, written) = stream.write_all(output).await;
            output = written;
            output.clear();
            if result.is_err() {
                return false;
            }
        }
        if close {
            return error;
        }
        if let Some(wait) = outcome.lease_wait.take() {
            wait.finish().await;
            continue; // The unconsumed request is decided again, lease in hand.
        }
        if outcome.requests == PIPELINE_BATCH_MAX {
            continue; // More complete requests may be buffered: no read yet.
        }
        shrink(&mut input);
        shrink(&mut output);
        if input.len() == input.capacity() {
            if input.len() >= input_bytes_max {
                let response = Response::problem(413, "request framing exceeds the input buffer limit");
                respond_and_close(core, stream, response).await;
                return true;
            }
            input.reserve(input.capacity().min(input_bytes_max - input.len()));
        }
        let phase = if decoder.in_body() {
            Phase::Body
        } else if input.is_empty() {
            Phase::Idle
        } else {
            Phase::Head
        };
        arm_deadline(core, conn_key, phase);
        let length = input.len();
        let (result, filled) = stream.read(input.slice_mut(length..)).await;
        input = filled.into_inner();
        match result {
            Ok(0) | Err(_) => {
                let timed_out = core.conns.borrow()[conn_key].timed_out;
                if timed_out && phase != Phase::Idle {
                    respond_and_close(core, stream, Response::problem(408, "the request did not arrive in time")).await;
                }
                return false;
            }
            Ok(_) => {}
        }
    }
}

/// What one batch of decoding did.
struct BatchOutcome {
    /// Input bytes the batch's requests used.
    consumed: usize,
    /// Requests decoded (including an error's response).
    requests: usize,
    /// A response asked to close the connection.
    close: bool,
    /// A decode error ended the batch; its response is the batch's last.
    error: bool,
    /// The batch stopped before a request that needs a rate-limit lease.
    lease_wait: Option<LeaseWait>,
}

/// Decodes and dispatches every complete request in `input` (up to the batch
/// limits). Responses that are ready while nothing before them waits on
/// another shard are encoded into `output` at once; the rest go to `batch`,
/// to be encoded in order once their replies arrive.
fn decode_batch(
    core: &Rc<Core>,
    decoder: &mut Decoder,
    input: &[u8],
    peer: Option<IpAddr>,
    now_ms: u64,
    batch: &mut Vec<Pending>,
    output: &mut Vec<u8>,
) -> BatchOutcome {
    let mut outcome = BatchOutcome { consumed: 0, requests: 0, close: false, error: false, lease_wait: None };
    while outcome.requests < PIPELINE_BATCH_MAX && output.len() < OUTPUT_BATCH_BYTES_MAX {
        let (step, meta) = match decoder.decode(&input[outcome.consumed..]) {
            Ok(Decoded::Partial) => break,
            Ok(Decoded::Complete { request, consumed }) => {
                let head_only = request.method == Method::Head;
                let persistence = persistence(&request, core.shutting_down.get());
                let Dispatched { step, route, rate } = dispatch(core, &request, peer, now_ms);
                if let Step::Wait(wait) = step {
                    outcome.lease_wait = Some(wait);
                    break;
                }
                outcome.consumed += consumed;
                (step, Meta { route, head_only, persistence, rate })
            }
            Err(error) => {
                let response = Response { close: true, ..Response::problem(error.status(), &error.to_string()) };
                outcome.consumed = input.len();
                outcome.error = true;
                let meta = Meta { route: Route::Other, head_only: false, persistence: Persistence::Close, rate: None };
                (Step::Ready(response), meta)
            }
        };
        outcome.requests += 1;
        let closing = meta.persistence == Persistence::Close;
        // Encoded in place while nothing before it waits; moved only otherwise.
        match &step {
            Step::Ready(response) if batch.is_empty() => outcome.close |= write_response(core, output, response, &meta),
            _ => batch.push(Pending { step, meta }),
        }
        if closing {
            outcome.close = true;
            break;
        }
    }
    outcome
}

/// Encodes one response and counts it. Returns true when the connection
/// must close after it.
fn write_response(core: &Core, output: &mut Vec<u8>, response: &Response, meta: &Meta) -> bool {
    let persistence = if response.close { Persistence::Close } else { meta.persistence };
    let framing = Framing { head_only: meta.head_only, persistence, rate: meta.rate.as_ref() };
    encode(output, response, &core.date.borrow(), framing);
    core.metrics().request(meta.route, response.status);
    persistence == Persistence::Close
}

fn persistence(request: &Request<'_>, shutting_down: bool) -> Persistence {
    match (request.keep_alive && !shutting_down, request.version_minor) {
        (false, _) => Persistence::Close,
        (true, 0) => Persistence::KeepAlive10,
        (true, _) => Persistence::KeepAlive11,
    }
}

fn set_phase(core: &Core, conn_key: usize, phase: Phase, deadline_ms: u64) {
    let mut conns = core.conns.borrow_mut();
    let conn = &mut conns[conn_key];
    conn.phase = phase;
    conn.deadline_ms = deadline_ms;
}

/// Records the phase a read waits in and, unless the phase continues, its deadline.
fn arm_deadline(core: &Core, conn_key: usize, phase: Phase) {
    let config = &core.config;
    let now_ms = core.now_ms.get();
    let mut conns = core.conns.borrow_mut();
    let conn = &mut conns[conn_key];
    let deadline_ms = match phase {
        Phase::Idle => now_ms + config.idle_timeout_s * 1000,
        // The head deadline runs from its first byte, not from each read.
        Phase::Head if conn.head_started_ms != 0 => conn.head_started_ms + config.header_timeout_s * 1000,
        Phase::Head => {
            conn.head_started_ms = now_ms;
            now_ms + config.header_timeout_s * 1000
        }
        Phase::Body => now_ms + config.body_timeout_s * 1000,
        Phase::Busy => 0,
    };
    if phase != Phase::Head {
        conn.head_started_ms = 0;
    }
    conn.phase = phase;
    conn.deadline_ms = deadline_ms;
}

fn shrink(buffer: &mut Vec<u8>) {
    if buffer.capacity() > BUFFER_BYTES_KEPT_MAX && buffer.len() <= BUFFER_BYTES {
        buffer.shrink_to(BUFFER_BYTES);
    }
}

async fn respond_and_close(core: &Core, stream: &mut TcpStream, response: Response) {
    let mut output = Vec::with_capacity(256 + response.body.len());
    core.date.borrow_mut().refresh(SystemTime::now());
    encode(
        &mut output,
        &response,
        &core.date.borrow(),
        Framing { head_only: false, persistence: Persistence::Close, rate: None },
    );
    core.metrics().request(Route::Other, response.status);
    let _ = stream.write_all(output).await;
}

/// Half-closes, then reads and discards what the client still sends, so the
/// kernel does not answer it with a reset that would destroy our response.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut discarded = 0;
        let mut buffer = vec![0u8; BUFFER_BYTES];
        while discarded < LINGER_BYTES_MAX {
            let (result, returned) = stream.read(buffer).await;
            buffer = returned;
            match result {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

/// Answers a connection over `--max-connections` without spawning a task: a
/// fresh socket's send buffer is empty, so a non-blocking send cannot stall.
pub fn refuse(core: &Core, stream: &TcpStream) {
    let mut output = Vec::with_capacity(256);
    let response = Response::overloaded("this shard is at its connection limit");
    encode(
        &mut output,
        &response,
        &core.date.borrow(),
        Framing { head_only: false, persistence: Persistence::Close, rate: None },
    );
    // SAFETY: the fd is open for the duration of the call; the buffer is ours.
    unsafe {
        libc::send(stream.as_raw_fd(), output.as_ptr().cast(), output.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    }
}
