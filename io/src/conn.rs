//! One task per connection: read, decode, dispatch, encode, write.
//!
//! All complete requests in the input are decoded and dispatched before any
//! reply is awaited, so the requests of a pipelined batch reach their owner
//! shards together; their responses are then encoded in request order and
//! written together. Deadlines live in the core's registry
//! (`core::conns`): the ticker cuts a connection that overstays its phase,
//! a writer included (`--send-timeout`, from its last progress).
//!
//! Output is bounded three ways: a batch stops decoding at
//! [`OUTPUT_BATCH_BYTES_MAX`] and is written before more is read (a peer
//! that does not read stops being read: backpressure, not buffering);
//! large bodies are written from their shared buffers, never copied
//! ([`SHARED_BODY_BYTES_MIN`]); and the core's encoded output across all
//! connections has a budget (`core::conns::OUTPUT_BYTES_MAX`) past which
//! connections wait before decoding more.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::codec::{Decoded, Decoder, Method, Request};
use shardgate_http::response::{encode, Framing, Persistence, RateHeaders, Response, CONTINUE, SHARED_BODY_BYTES_MIN};

use crate::core::{Core, Phase};
use crate::dispatch::{Dispatched, Dispatcher, Step};
use crate::limit::LeaseWait;
use crate::runtime::metrics::Route;

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

/// Encoded responses waiting to be written: heads and small bodies copied
/// into `bytes`, large bodies kept as their shared buffers, each after the
/// copied bytes before it.
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    /// (offset in `bytes` the body follows, the body).
    shared: Vec<(usize, Bytes)>,
    shared_bytes: usize,
}

impl Output {
    fn with_capacity(bytes: usize) -> Output {
        Output { bytes: Vec::with_capacity(bytes), shared: Vec::new(), shared_bytes: 0 }
    }

    /// Bytes a batch has produced, copied and shared.
    fn len(&self) -> usize {
        self.bytes.len() + self.shared_bytes
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.shared.is_empty()
    }

    /// Encodes `response` at the end.
    fn encode(&mut self, response: &Response, date: &shardgate_http::response::DateCache, framing: Framing<'_>) {
        if let Some(body) = encode(&mut self.bytes, response, date, framing) {
            debug_assert!(body.len() >= SHARED_BODY_BYTES_MIN);
            self.shared_bytes += body.len();
            self.shared.push((self.bytes.len(), body));
        }
    }
}

/// One connection's buffers and decoder.
struct Connection {
    stream: TcpStream,
    key: usize,
    peer: Option<IpAddr>,
    decoder: Decoder,
    input: Vec<u8>,
    output: Output,
    batch: Vec<Pending>,
    input_bytes_max: usize,
}

/// How one turn of the request loop ended.
enum Turn {
    /// Read more input.
    Read,
    /// Decode again without reading: more requests are buffered, or a
    /// lease arrived for the request left unconsumed.
    Again,
    /// Close; `true` when after an error response, so the close lingers.
    Close(bool),
}

/// Serves one connection until it closes, then removes it from the registry.
pub async fn serve(dispatcher: Rc<Dispatcher>, stream: TcpStream, key: usize) {
    let core = Rc::clone(dispatcher.core());
    let limits = core.config().limits;
    let peer = stream.peer_addr().ok().map(|address| address.ip());
    let mut connection = Connection {
        stream,
        key,
        peer,
        decoder: Decoder::new(limits),
        input: Vec::with_capacity(BUFFER_BYTES),
        output: Output::with_capacity(BUFFER_BYTES),
        batch: Vec::with_capacity(PIPELINE_BATCH_MAX),
        input_bytes_max: limits.head_bytes_max + 2 * limits.body_bytes_max + BUFFER_BYTES,
    };
    let lingering = loop {
        if core.conns().output_full() {
            // The core's output is at its budget: decode nothing more until
            // other connections' output drains (or their send timeout ends them).
            core.metrics().output_wait();
            core.conns().output_room().await;
        }
        match connection.turn(&dispatcher).await {
            Turn::Again => continue,
            Turn::Close(lingering) => break lingering,
            Turn::Read => {}
        }
        if let Some(lingering) = connection.read(&core).await {
            break lingering;
        }
    };
    if lingering {
        linger(&mut connection.stream).await;
    }
    let open = core.conns().close(key);
    core.metrics().connections(open);
}

impl Connection {
    /// Decodes and answers every complete request buffered, then writes.
    async fn turn(&mut self, dispatcher: &Dispatcher) -> Turn {
        let core = dispatcher.core();
        let started = Instant::now();
        let now_ms = core.tick(SystemTime::now());
        core.conns().set_busy(self.key);
        let mut outcome = {
            let _busy = core.busy();
            let batch = Batch { dispatcher, peer: self.peer, now_ms };
            batch.decode(&mut self.decoder, &self.input, &mut self.batch, &mut self.output)
        };
        // Shutting down closes a connection between requests, never in the
        // middle of one: a request whose bytes are still arriving is finished.
        let mid_request = self.input.len() > outcome.consumed;
        let mut close = outcome.close || (core.conns().shutting_down() && !mid_request);
        let mut batch = std::mem::take(&mut self.batch);
        let mut failed = false;
        for pending in batch.drain(..) {
            let response = match pending.step {
                Step::Ready(response) => response,
                Step::Kv(waiting) => waiting.response(core.shard_count()).await,
                Step::Gateway(relay) => relay.await,
                Step::Wait(_) => unreachable!("a request waiting for a lease is not in the batch"),
            };
            close |= write_response(core, &mut self.output, &response, &pending.meta);
            // Written as it grows: a batch's responses are not all held
            // until the last one is ready.
            if self.output.len() >= OUTPUT_BATCH_BYTES_MAX && !self.flush(core).await {
                failed = true;
                break;
            }
        }
        batch.clear();
        self.batch = batch;
        if failed {
            return Turn::Close(false);
        }
        if outcome.requests > 0 {
            core.metrics().duration(started.elapsed().as_micros() as u64, outcome.requests as u64);
        }
        self.input.drain(..outcome.consumed);
        if self.decoder.take_continue() {
            self.output.bytes.extend_from_slice(CONTINUE);
        }
        if !self.output.is_empty() && !self.flush(core).await {
            return Turn::Close(false);
        }
        if close {
            return Turn::Close(outcome.error);
        }
        if let Some(wait) = outcome.lease_wait.take() {
            wait.finish().await;
            return Turn::Again; // The unconsumed request is decided again, lease in hand.
        }
        if outcome.requests == PIPELINE_BATCH_MAX {
            return Turn::Again; // More complete requests may be buffered: no read yet.
        }
        Turn::Read
    }

    /// Writes all of the output, the send deadline re-armed after every
    /// write that makes progress; the copied bytes count against the core's
    /// output budget meanwhile. Returns false when the peer stopped taking
    /// bytes (an error, or the ticker cut it at the send timeout).
    async fn flush(&mut self, core: &Core) -> bool {
        let held = self.output.bytes.len();
        core.conns().hold_output(held);
        let shared = std::mem::take(&mut self.output.shared);
        let mut bytes = std::mem::take(&mut self.output.bytes);
        let mut from = 0;
        let mut written = true;
        for (until, body) in &shared {
            let (ok, returned) = write_copied(&mut self.stream, bytes, from, *until, core, self.key).await;
            bytes = returned;
            from = *until;
            written = ok && write_shared(&mut self.stream, body.clone(), core, self.key).await;
            if !written {
                break;
            }
        }
        if written {
            let end = bytes.len();
            let (ok, returned) = write_copied(&mut self.stream, bytes, from, end, core, self.key).await;
            bytes = returned;
            written = ok;
        }
        core.conns().release_output(held);
        core.conns().set_busy(self.key);
        if !written && core.conns().timed_out(self.key) {
            core.metrics().send_timeout();
        }
        bytes.clear();
        self.output = Output { bytes, shared: Vec::new(), shared_bytes: 0 };
        written
    }

    /// Reads more input, within the input limit and the phase's deadline.
    /// Returns Some when the connection must close (`true`: lingering).
    async fn read(&mut self, core: &Core) -> Option<bool> {
        shrink(&mut self.input);
        shrink(&mut self.output.bytes);
        if self.input.len() == self.input.capacity() {
            if self.input.len() >= self.input_bytes_max {
                let response = Response::problem(413, "request framing exceeds the input buffer limit");
                respond_and_close(core, &mut self.stream, response).await;
                return Some(true);
            }
            self.input.reserve(self.input.capacity().min(self.input_bytes_max - self.input.len()));
        }
        let phase = if self.decoder.in_body() {
            Phase::Body
        } else if self.input.is_empty() {
            Phase::Idle
        } else {
            Phase::Head
        };
        core.conns().arm(self.key, phase, core.now_ms());
        let length = self.input.len();
        let (result, filled) = self.stream.read(std::mem::take(&mut self.input).slice_mut(length..)).await;
        self.input = filled.into_inner();
        match result {
            Ok(0) | Err(_) => {
                if core.conns().timed_out(self.key) && phase != Phase::Idle {
                    let response = Response::problem(408, "the request did not arrive in time");
                    respond_and_close(core, &mut self.stream, response).await;
                }
                Some(false)
            }
            Ok(_) => None,
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

/// One batch's context.
struct Batch<'a> {
    dispatcher: &'a Dispatcher,
    peer: Option<IpAddr>,
    now_ms: u64,
}

impl Batch<'_> {
    /// Decodes and dispatches every complete request in `input` (up to the
    /// batch limits). Responses that are ready while nothing before them
    /// waits on another shard are encoded into `output` at once; the rest go
    /// to `batch`, to be encoded in order once their replies arrive. Kept in
    /// one loop: it is the hot path of pipelined requests.
    fn decode(
        &self,
        decoder: &mut Decoder,
        input: &[u8],
        batch: &mut Vec<Pending>,
        output: &mut Output,
    ) -> BatchOutcome {
        let core = self.dispatcher.core();
        let mut outcome = BatchOutcome { consumed: 0, requests: 0, close: false, error: false, lease_wait: None };
        while outcome.requests < PIPELINE_BATCH_MAX && output.len() < OUTPUT_BATCH_BYTES_MAX {
            let (step, meta) = match decoder.decode(&input[outcome.consumed..]) {
                Ok(Decoded::Partial) => break,
                Ok(Decoded::Complete { request, consumed }) => {
                    let head_only = request.method == Method::Head;
                    let persistence = persistence(&request, core.conns().shutting_down());
                    let Dispatched { step, route, rate } = self.dispatcher.dispatch(&request, self.peer, self.now_ms);
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
                    let meta =
                        Meta { route: Route::Other, head_only: false, persistence: Persistence::Close, rate: None };
                    (Step::Ready(response), meta)
                }
            };
            outcome.requests += 1;
            let closing = meta.persistence == Persistence::Close;
            // Encoded in place while nothing before it waits; moved only otherwise.
            match &step {
                Step::Ready(response) if batch.is_empty() => {
                    outcome.close |= write_response(core, output, response, &meta)
                }
                _ => batch.push(Pending { step, meta }),
            }
            if closing {
                outcome.close = true;
                break;
            }
        }
        outcome
    }
}

/// Encodes one response and counts it. Returns true when the connection
/// must close after it.
fn write_response(core: &Core, output: &mut Output, response: &Response, meta: &Meta) -> bool {
    let persistence = if response.close { Persistence::Close } else { meta.persistence };
    let framing = Framing { head_only: meta.head_only, persistence, rate: meta.rate.as_ref() };
    output.encode(response, &core.date(), framing);
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

fn shrink(buffer: &mut Vec<u8>) {
    if buffer.capacity() > BUFFER_BYTES_KEPT_MAX && buffer.len() <= BUFFER_BYTES {
        buffer.shrink_to(BUFFER_BYTES);
    }
}

/// Writes `bytes[from..until]`, re-arming the send deadline after each
/// write that makes progress. Returns whether it all went, and the buffer.
async fn write_copied(
    stream: &mut TcpStream,
    mut bytes: Vec<u8>,
    mut from: usize,
    until: usize,
    core: &Core,
    key: usize,
) -> (bool, Vec<u8>) {
    while from < until {
        core.conns().arm(key, Phase::Writing, core.now_ms());
        let (result, slice) = stream.write(bytes.slice(from..until)).await;
        bytes = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return (false, bytes),
            Ok(n) => from += n,
        }
    }
    (true, bytes)
}

/// Writes a shared body, as [`write_copied`] does.
async fn write_shared(stream: &mut TcpStream, mut body: Bytes, core: &Core, key: usize) -> bool {
    while !body.is_empty() {
        core.conns().arm(key, Phase::Writing, core.now_ms());
        let (result, sent) = stream.write(body).await;
        match result {
            Ok(0) | Err(_) => return false,
            Ok(n) => body = Bytes::slice(&sent, n..),
        }
    }
    true
}

async fn respond_and_close(core: &Core, stream: &mut TcpStream, response: Response) {
    let mut output = Vec::with_capacity(256 + response.body.len());
    core.tick(SystemTime::now());
    let framing = Framing { head_only: false, persistence: Persistence::Close, rate: None };
    if let Some(body) = encode(&mut output, &response, &core.date(), framing) {
        output.extend_from_slice(&body);
    }
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
    let framing = Framing { head_only: false, persistence: Persistence::Close, rate: None };
    if let Some(body) = encode(&mut output, &response, &core.date(), framing) {
        output.extend_from_slice(&body);
    }
    // SAFETY: the fd is open for the duration of the call; the buffer is ours.
    unsafe {
        libc::send(stream.as_raw_fd(), output.as_ptr().cast(), output.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    }
}
