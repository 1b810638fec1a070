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
use shardgate_http::body::{self, BodyWriter};
use shardgate_http::codec::{BodyToStream, Decoded, Decoder, Limits, Method, Request};
use shardgate_http::origin::{BodyDecoder, BodyStep};
use shardgate_http::proxy::StreamedRequestBody;
use shardgate_http::response::{
    encode, Extra, Framing, Persistence, RateHeaders, Response, StreamBody, Tail, CONTINUE, SHARED_BODY_BYTES_MIN,
};

use crate::core::{Core, Phase};
use crate::dispatch::{Dispatched, Dispatcher, Step};
use crate::limit::LeaseWait;
use crate::runtime::access_log::Entry;
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
/// Gateway mode: request bodies from this size (and chunked ones) stream
/// to the origin instead of being read whole first.
pub const STREAM_BODY_BYTES_MIN: usize = 64 * 1024;
/// Request body bytes a streaming upload may hold ahead of the origin.
const UPLOAD_WINDOW_BYTES: usize = 256 * 1024;
/// After an error response: how long and how much to keep reading so the
/// client sees the response instead of a reset (nginx's lingering close).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// What encoding and counting a response needs to know of its request.
struct Meta {
    route: Route,
    head_only: bool,
    /// HTTP/1.1: a body of unknown length may be sent chunked.
    chunked_ok: bool,
    persistence: Persistence,
    rate: Option<RateHeaders>,
    /// What the access log records of the request (only when it is on).
    log: Option<Box<LogMeta>>,
}

/// The request's part of an access log line.
struct LogMeta {
    method: Vec<u8>,
    target: Vec<u8>,
    owner: Option<u32>,
}

impl LogMeta {
    fn of(request: &Request<'_>, owner: Option<u32>) -> LogMeta {
        let method = request.head.split(|&b| b == b' ').next().unwrap_or_default().to_vec();
        LogMeta { method, target: request.target.to_vec(), owner }
    }
}

/// A response written, waiting for its access log line.
struct Logged {
    meta: Box<LogMeta>,
    status: u16,
    bytes: u64,
    cache: Option<&'static str>,
    origin_us: Option<u32>,
}

/// A dispatched request whose response is not yet encoded.
struct Pending {
    step: Step,
    meta: Meta,
}

/// Encoded responses waiting to be written: heads and small bodies copied
/// into `bytes`, large bodies kept as their shared buffers (or pieces, or
/// the stream they arrive on), each after the copied bytes before it.
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    /// (offset in `bytes` the body follows, the body, its response's
    /// access log entry if any).
    shared: Vec<(usize, Tail, Option<usize>)>,
    shared_bytes: usize,
}

/// Where a batch's responses go: the output, and their access log entries.
struct Written<'a> {
    output: &'a mut Output,
    logged: &'a mut Vec<Logged>,
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

    /// Encodes `response` at the end. Returns true when its body runs to
    /// the close of the connection. `logged`: its access log entry.
    fn encode(
        &mut self,
        response: &Response,
        date: &shardgate_http::response::DateCache,
        framing: Framing<'_>,
        logged: Option<usize>,
    ) -> bool {
        let (tail, to_close) = encode(&mut self.bytes, response, date, framing);
        let bytes = match &tail {
            Tail::None => return to_close,
            Tail::Shared(body) => {
                debug_assert!(body.len() >= SHARED_BODY_BYTES_MIN);
                body.len()
            }
            Tail::Pieces(pieces) => pieces.len() as usize,
            // A stream is written before anything after it: it ends the batch.
            Tail::Stream { .. } => OUTPUT_BATCH_BYTES_MAX,
        };
        self.shared_bytes += bytes;
        self.shared.push((self.bytes.len(), tail, logged));
        to_close
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
    /// Access log entries of responses not yet written.
    logged: Vec<Logged>,
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
        decoder: match core.config().gateway {
            Some(_) => {
                let mut decoder = Decoder::new(limits);
                decoder.stream_bodies_from(STREAM_BODY_BYTES_MIN);
                decoder
            }
            None => Decoder::new(limits),
        },
        input: Vec::with_capacity(BUFFER_BYTES),
        output: Output::with_capacity(BUFFER_BYTES),
        batch: Vec::with_capacity(PIPELINE_BATCH_MAX),
        input_bytes_max: input_bytes_max(limits, core.config().gateway.is_some()),
        logged: Vec::new(),
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
            let log = core.access_log().is_some();
            let batch = Batch { dispatcher, peer: self.peer, now_ms, log };
            let written = Written { output: &mut self.output, logged: &mut self.logged };
            batch.decode(&mut self.decoder, &self.input, &mut self.batch, written)
        };
        // Shutting down closes a connection between requests, never in the
        // middle of one: a request whose bytes are still arriving is finished.
        let mid_request = self.input.len() > outcome.consumed;
        let mut close = outcome.close || (core.conns().shutting_down() && !mid_request);
        if let Some(upload) = outcome.upload.take() {
            // The body follows the head: feed it to the exchange now, while
            // the responses before it wait (they are written in order anyway).
            self.input.drain(..outcome.consumed);
            outcome.consumed = 0;
            if self.decoder.take_continue() {
                self.output.bytes.extend_from_slice(CONTINUE);
                if !self.flush(core).await {
                    return Turn::Close(false);
                }
            }
            // A body that could not be fed whole leaves the connection
            // without a known next request: it closes after the responses.
            close |= !self.pump_upload(core, upload).await;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut failed = false;
        for pending in batch.drain(..) {
            let response = match pending.step {
                Step::Ready(response) => response,
                Step::Kv(waiting) => waiting.response(core.shard_count()).await,
                Step::Gateway(relay) => relay.await,
                Step::Wait(_) => unreachable!("a request waiting for a lease is not in the batch"),
            };
            let written = Written { output: &mut self.output, logged: &mut self.logged };
            close |= write_response(core, written, response, pending.meta);
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
        self.write_log(core, started);
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

    /// Feeds a streamed request body to its exchange: decoded (de-chunked)
    /// from the input and the socket, held at most a window ahead of the
    /// origin, bounded by `--max-body`, each read within `--body-timeout`.
    /// What follows the body stays in the input. Returns false when the
    /// body could not be fed whole (broken framing, too long, the client
    /// stopped, or the exchange stopped reading): the connection then closes.
    async fn pump_upload(&mut self, core: &Core, upload: Upload) -> bool {
        let Upload { writer, mut decoder } = upload;
        let limit = core.config().limits.body_bytes_max as u64;
        let mut buffer = bytes::BytesMut::from(&self.input[..]);
        self.input.clear();
        let mut total = 0u64;
        loop {
            match decoder.step(&mut buffer) {
                Err(_) => break,
                Ok(BodyStep::Data(chunk)) => {
                    total += chunk.len() as u64;
                    if total > limit || writer.room().await.is_err() {
                        break;
                    }
                    writer.push(chunk);
                }
                Ok(BodyStep::End) => {
                    writer.finish();
                    self.input.extend_from_slice(&buffer);
                    return true;
                }
                Ok(BodyStep::More) => {
                    core.conns().arm(self.key, Phase::Body, core.now_ms());
                    buffer.reserve(BUFFER_BYTES_KEPT_MAX);
                    // Read after what is there: monoio reads into a buffer from its start.
                    let length = buffer.len();
                    let (read, returned) = self.stream.read(buffer.slice_mut(length..)).await;
                    buffer = returned.into_inner();
                    core.conns().set_busy(self.key);
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
        writer.abort();
        false
    }

    /// Writes the access log lines of the responses just written.
    fn write_log(&mut self, core: &Core, started: Instant) {
        let Some(log) = core.access_log() else {
            return;
        };
        let now = SystemTime::now();
        let duration_us = started.elapsed().as_micros() as u64;
        for logged in self.logged.drain(..) {
            let entry = Entry {
                client: self.peer,
                method: &logged.meta.method,
                target: &logged.meta.target,
                status: logged.status,
                bytes: logged.bytes,
                duration_us,
                cache: logged.cache,
                origin_us: logged.origin_us,
                shard: logged.meta.owner.unwrap_or(core.id()),
            };
            if !log.record(now, &entry) {
                core.metrics().access_log_dropped();
            }
        }
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
        for (until, tail, logged) in shared {
            let (ok, returned) = write_copied(&mut self.stream, bytes, from, until, core, self.key).await;
            bytes = returned;
            from = until;
            let sent = match ok {
                true => write_tail(&mut self.stream, tail, core, self.key).await,
                false => None,
            };
            if let (Some(sent), Some(index)) = (sent, logged) {
                if let Some(entry) = self.logged.get_mut(index) {
                    entry.bytes = sent;
                }
            }
            written = sent.is_some();
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
    /// The batch's last request streams its body: the connection feeds it.
    upload: Option<Upload>,
}

/// A request body the connection streams to its exchange.
struct Upload {
    writer: BodyWriter,
    decoder: BodyDecoder,
}

/// One batch's context.
struct Batch<'a> {
    dispatcher: &'a Dispatcher,
    peer: Option<IpAddr>,
    now_ms: u64,
    /// The access log is on: requests keep what it records.
    log: bool,
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
        written: Written<'_>,
    ) -> BatchOutcome {
        let Written { output, logged } = written;
        let core = self.dispatcher.core();
        let mut outcome =
            BatchOutcome { consumed: 0, requests: 0, close: false, error: false, lease_wait: None, upload: None };
        while outcome.requests < PIPELINE_BATCH_MAX && output.len() < OUTPUT_BATCH_BYTES_MAX {
            let (step, meta) = match decoder.decode(&input[outcome.consumed..]) {
                Ok(Decoded::Partial) => break,
                Ok(Decoded::Complete { request, consumed }) => {
                    let head_only = request.method == Method::Head;
                    let chunked_ok = request.version_minor == 1;
                    let persistence = persistence(&request, core.conns().shutting_down());
                    let (upload, streamed) = match request.streamed {
                        None => (None, None),
                        Some(framing) => {
                            let (length, decoder) = match framing {
                                BodyToStream::Length(length) => (Some(length), BodyDecoder::length(length)),
                                BodyToStream::Chunked => (None, BodyDecoder::chunked()),
                            };
                            let (writer, reader) = body::channel(false, UPLOAD_WINDOW_BYTES, length);
                            (Some(Upload { writer, decoder }), Some(StreamedRequestBody { reader, length }))
                        }
                    };
                    let dispatched = self.dispatcher.dispatch(&request, self.peer, self.now_ms, streamed);
                    let Dispatched { step, route, rate, owner } = dispatched;
                    if let Step::Wait(wait) = step {
                        outcome.lease_wait = Some(wait);
                        break;
                    }
                    outcome.consumed += consumed;
                    let log = self.log.then(|| Box::new(LogMeta::of(&request, owner)));
                    outcome.upload = upload;
                    (step, Meta { route, head_only, chunked_ok, persistence, rate, log })
                }
                Err(error) => {
                    let response = Response { close: true, ..Response::problem(error.status(), &error.to_string()) };
                    outcome.consumed = input.len();
                    outcome.error = true;
                    let meta = Meta {
                        route: Route::Other,
                        head_only: false,
                        chunked_ok: false,
                        persistence: Persistence::Close,
                        rate: None,
                        log: self
                            .log
                            .then(|| Box::new(LogMeta { method: b"-".to_vec(), target: b"-".to_vec(), owner: None })),
                    };
                    (Step::Ready(response), meta)
                }
            };
            outcome.requests += 1;
            let closing = meta.persistence == Persistence::Close;
            // Encoded in place while nothing before it waits; moved only otherwise.
            match step {
                Step::Ready(response) if batch.is_empty() => {
                    let written = Written { output: &mut *output, logged: &mut *logged };
                    outcome.close |= write_response(core, written, response, meta)
                }
                step => batch.push(Pending { step, meta }),
            }
            if closing {
                outcome.close = true;
                break;
            }
            if outcome.upload.is_some() {
                break; // Its body comes next in the input.
            }
        }
        outcome
    }
}

/// Encodes one response and counts it. Returns true when the connection
/// must close after it.
/// The response is taken by value and dropped once encoded: a body it
/// streams is then read only by the copy the output holds (a reader left
/// behind would hold back a windowed stream for good).
fn write_response(core: &Core, written: Written<'_>, response: Response, meta: Meta) -> bool {
    let persistence = if response.close { Persistence::Close } else { meta.persistence };
    let framing =
        Framing { head_only: meta.head_only, chunked_ok: meta.chunked_ok, persistence, rate: meta.rate.as_ref() };
    let logged = meta.log.map(|log| {
        let (cache, origin_us) = match &response.extra {
            Extra::Proxied(proxied) => (proxied.x_cache, proxied.origin_us),
            _ => (None, None),
        };
        let bytes = if meta.head_only { 0 } else { response.body_length().unwrap_or(0) };
        written.logged.push(Logged { meta: log, status: response.status, bytes, cache, origin_us });
        written.logged.len() - 1
    });
    let to_close = written.output.encode(&response, &core.date(), framing, logged);
    core.metrics().request(meta.route, response.status);
    drop(response);
    persistence == Persistence::Close || to_close
}

/// The input buffer's bound: a head and twice the largest body read whole
/// (a chunked body is de-chunked beside its raw bytes), a few KiB more. In
/// gateway mode a body of [`STREAM_BODY_BYTES_MIN`] or more is streamed,
/// so the buffer need not hold `--max-body`.
fn input_bytes_max(limits: Limits, gateway: bool) -> usize {
    let whole_body_bytes_max = match gateway {
        true => limits.body_bytes_max.min(STREAM_BODY_BYTES_MIN),
        false => limits.body_bytes_max,
    };
    limits.head_bytes_max + 2 * whole_body_bytes_max + BUFFER_BYTES
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

/// Writes what follows a head: a shared body, its pieces, or a stream as
/// it arrives (chunked when so framed, cut at its length when it has one).
/// Returns the body bytes written, or None when the peer stopped taking
/// bytes or the stream broke (the connection then closes: a body cut short
/// cannot be framed).
async fn write_tail(stream: &mut TcpStream, tail: Tail, core: &Core, key: usize) -> Option<u64> {
    match tail {
        Tail::None => Some(0),
        Tail::Shared(body) => {
            let length = body.len() as u64;
            write_shared(stream, body, core, key).await.then_some(length)
        }
        Tail::Pieces(pieces) => {
            for piece in pieces.iter() {
                if !write_shared(stream, piece.clone(), core, key).await {
                    return None;
                }
            }
            Some(pieces.len())
        }
        Tail::Stream { body, chunked } => write_stream(stream, body, chunked, core, key).await,
    }
}

/// Writes a body as it arrives from its stream: first skipping `skip`
/// bytes (a range), then up to `length` when set. While a chunk is awaited
/// the connection has no send deadline (the origin side has its own
/// timeout, which ends the stream).
async fn write_stream(stream: &mut TcpStream, body: StreamBody, chunked: bool, core: &Core, key: usize) -> Option<u64> {
    let StreamBody { mut reader, mut skip, length } = body;
    let mut left = length.unwrap_or(u64::MAX);
    let mut chunked_any = false;
    let mut sent = 0u64;
    while left > 0 {
        core.conns().set_busy(key);
        let mut chunk = match reader.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => return None,
            None if length.is_some() => return None, // Ended before its announced length.
            None => break,
        };
        if skip > 0 {
            let skipped = skip.min(chunk.len() as u64);
            skip -= skipped;
            chunk = Bytes::slice(&chunk, skipped as usize..);
        }
        if chunk.len() as u64 > left {
            chunk = Bytes::slice(&chunk, ..left as usize);
        }
        if chunk.is_empty() {
            continue;
        }
        left -= chunk.len() as u64;
        sent += chunk.len() as u64;
        // The CRLF that ends a chunk goes out with the next chunk's size line.
        let open = if chunked_any { "\r\n" } else { "" };
        chunked_any = true;
        if chunked && !write_shared(stream, Bytes::from(format!("{open}{:x}\r\n", chunk.len())), core, key).await {
            return None;
        }
        if !write_shared(stream, chunk, core, key).await {
            return None;
        }
    }
    let last: &'static [u8] = if chunked_any { b"\r\n0\r\n\r\n" } else { b"0\r\n\r\n" };
    let ended = !chunked || write_shared(stream, Bytes::from_static(last), core, key).await;
    ended.then_some(sent)
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
    let framing = Framing { head_only: false, chunked_ok: false, persistence: Persistence::Close, rate: None };
    if let (Tail::Shared(body), _) = encode(&mut output, &response, &core.date(), framing) {
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
    let framing = Framing { head_only: false, chunked_ok: false, persistence: Persistence::Close, rate: None };
    if let (Tail::Shared(body), _) = encode(&mut output, &response, &core.date(), framing) {
        output.extend_from_slice(&body);
    }
    // SAFETY: the fd is open for the duration of the call; the buffer is ours.
    unsafe {
        libc::send(stream.as_raw_fd(), output.as_ptr().cast(), output.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    }
}
