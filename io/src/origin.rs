//! The origin client of one core: a keep-alive pool per origin, connect
//! and response timeouts, round-robin over healthy origins and the
//! per-origin circuit breaker. It knows nothing of caching.
//!
//! A request goes out as the head the gateway built, with its body whole
//! or streamed from the client ([`Outgoing`]). The answer comes back with
//! its head decoded (hop-by-hop and framing fields removed, as
//! `shardgate_http::origin` decodes it) and its body whole when it arrived
//! within [`BODY_BUFFERED_BYTES_MAX`]; a longer body stays on the
//! connection as a [`BodySource`] that the gateway reads chunk by chunk
//! while it streams it on, so no body is ever held whole here.
//!
//! Health comes from two places: the process-wide prober ([`health`]),
//! whose verdict every core reads, and this core's own failed connects,
//! which set an origin aside here until the next probe interval.

pub mod health;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::body::BodyReader;
use shardgate_http::origin::{parse_head, BodyDecoder, BodyStep, OriginResponse, ResponseError};
use shardgate_http::response::Response;
use shardgate_shards::breaker::{Admit, Breaker};

use crate::admission::{Admission, Permit};
use crate::config::OriginAddress;
use crate::runtime::metrics::Rejection;
pub use health::Health;

/// Read buffer for origin responses.
const READ_BYTES: usize = 64 * 1024;
/// A body longer than this is not read whole before the head is handed
/// on: the rest is streamed ([`BodySource`]).
pub const BODY_BUFFERED_BYTES_MAX: usize = 64 * 1024;

/// One origin as one core sees it.
pub struct Origin {
    pub address: OriginAddress,
    /// `Host` for requests that carry none: the origin's address.
    host: Vec<u8>,
    /// Idle keep-alive connections, at most `--origin-pool`.
    idle: RefCell<Vec<TcpStream>>,
    /// The process-wide health verdict (the prober's).
    pub health: Arc<Health>,
    /// A connect from this core failed: set aside here until this time
    /// (milliseconds), whatever the prober says.
    down_until_ms: Cell<u64>,
    pub breaker: RefCell<Breaker>,
    /// Its slots, queue and retry budget on this core.
    pub admission: Rc<Admission>,
}

/// Why an exchange with the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("connecting to the origin failed: {0}")]
    Connect(std::io::Error),
    #[error("connecting to the origin timed out")]
    ConnectTimeout,
    #[error("the origin did not answer in time")]
    Timeout,
    #[error("the origin connection failed: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error("the circuit to every origin is open")]
    CircuitOpen,
    #[error("the origin is at its concurrency limit ({})", .0.name())]
    Overloaded(Rejection),
    #[error("the retry budget of the origin is spent")]
    RetryRefused,
    #[error("the client's request body ended early")]
    RequestBody,
}

impl OriginError {
    /// The problem response a client gets for this failure (docs/spec.md §7: connect
    /// failures and bad answers 502, a response timeout 504, an open circuit 503).
    pub fn response(&self) -> Response {
        match self {
            OriginError::Timeout => Response::problem(504, &self.to_string()),
            OriginError::CircuitOpen | OriginError::Overloaded(_) | OriginError::RetryRefused => {
                Response::overloaded(&self.to_string())
            }
            OriginError::RequestBody => Response { close: true, ..Response::problem(400, &self.to_string()) },
            _ => Response::problem(502, &self.to_string()),
        }
    }
}

/// Timeouts and pool size of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_connections_max: usize,
}

/// A request as it goes to the origin: its head (with the body appended
/// when the body is whole) and, for a body streamed from the client, its
/// reader. The head says `Content-Length` or `Transfer-Encoding: chunked`.
pub struct Outgoing {
    pub head: Bytes,
    pub body: Option<StreamedBody>,
}

/// A request body streamed from the client to the origin.
pub struct StreamedBody {
    pub reader: BodyReader,
    /// Frame it as chunks (the client's length is unknown).
    pub chunked: bool,
}

impl From<Bytes> for Outgoing {
    fn from(head: Bytes) -> Outgoing {
        Outgoing { head, body: None }
    }
}

/// An origin's answer: its head, with the body whole unless `rest` holds
/// the connection it is still arriving on; then `response.body` holds
/// what arrived with the head, and the rest follows from `rest`.
pub struct Exchanged {
    pub response: OriginResponse,
    pub rest: Option<BodySource>,
    /// The whole body's length: the whole body's, or the announced one
    /// (`Content-Length`) of a body still arriving, if any.
    length: Option<u64>,
}

impl Exchanged {
    /// The whole body's length, when known.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The answer with its body whole: a streamed rest is read to the end,
    /// keeping at most `bytes_max` (more is an error), for callers that need
    /// the whole body (a queued write's delivery reads only the status).
    pub async fn whole(
        self,
        origin: &Origin,
        settings: ExchangeSettings,
        bytes_max: usize,
    ) -> Result<OriginResponse, OriginError> {
        let Exchanged { mut response, rest, .. } = self;
        let Some(mut rest) = rest else {
            return Ok(response);
        };
        let mut body = BytesMut::from(&response.body[..]);
        while let Some(chunk) = rest.next(settings.timeout).await? {
            if body.len() + chunk.len() > bytes_max {
                return Err(ResponseError::TooLarge.into());
            }
            body.extend_from_slice(&chunk);
        }
        rest.finish(origin, settings.pool_connections_max);
        response.body = body.freeze();
        Ok(response)
    }
}

/// The rest of a body, still on its origin connection. Holds the origin
/// slot the exchange took until it is dropped: a body being streamed is
/// origin work in flight.
pub struct BodySource {
    stream: TcpStream,
    input: BytesMut,
    decoder: BodyDecoder,
    keep_alive: bool,
    ended: bool,
    permit: Option<Permit>,
}

impl BodySource {
    /// The next body bytes, or None at the end; each read from the origin
    /// waits at most `timeout` (nginx's `proxy_read_timeout`: between two
    /// reads, not for the whole body).
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Bytes>, OriginError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            match self.decoder.step(&mut self.input)? {
                BodyStep::Data(chunk) => return Ok(Some(chunk)),
                BodyStep::End => {
                    self.ended = true;
                    return Ok(None);
                }
                BodyStep::More => {}
            }
            self.input.reserve(READ_BYTES);
            // Read after what is there: monoio reads into a buffer from its start.
            let length = self.input.len();
            let buffer = std::mem::take(&mut self.input).slice_mut(length..);
            let read = monoio::time::timeout(timeout, self.stream.read(buffer)).await;
            let Ok((result, buffer)) = read else {
                return Err(OriginError::Timeout);
            };
            self.input = buffer.into_inner();
            match result {
                Ok(0) => {
                    self.decoder.at_eof()?;
                    self.keep_alive = false;
                }
                Ok(_) => {}
                Err(error) => return Err(OriginError::Io(error)),
            }
        }
    }

    /// Gives the connection back to the pool when the body was read to its
    /// end and the connection may carry another exchange; else closes it.
    pub fn finish(self, origin: &Origin, pool_connections_max: usize) {
        let reusable = self.ended && self.keep_alive && self.input.is_empty() && !self.decoder.until_close();
        if reusable {
            origin.give_back(self.stream, pool_connections_max);
        }
    }

    /// Hands the origin slot to the source: released when it is dropped.
    pub fn hold(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }
}

impl Origin {
    pub fn new(address: OriginAddress, breaker: Breaker, admission: Rc<Admission>, health: Arc<Health>) -> Origin {
        let host = address.address.to_string().into_bytes();
        Origin {
            address,
            host,
            idle: RefCell::new(Vec::new()),
            health,
            down_until_ms: Cell::new(0),
            breaker: RefCell::new(breaker),
            admission,
        }
    }

    /// `Host` for requests that carry none.
    pub fn host(&self) -> &[u8] {
        &self.host
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Healthy as this core sees it: the prober says up and no connect from
    /// this core failed within the last probe interval.
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.health.is_up() && now_ms >= self.down_until_ms.get()
    }

    fn give_back(&self, stream: TcpStream, pool_connections_max: usize) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < pool_connections_max {
            idle.push(stream);
        }
    }

    /// Sends `request` and reads the answer's head (and its body, when it
    /// is short). A pooled connection that the origin closed meanwhile is
    /// retried once on a new connection when the request is idempotent
    /// (nothing came back, so it did not run), its body was not streamed,
    /// and the retry budget allows.
    pub async fn exchange(
        &self,
        request: Outgoing,
        expect_body: bool,
        idempotent: bool,
        limits: ExchangeSettings,
    ) -> Result<Exchanged, OriginError> {
        let Outgoing { head, body } = request;
        let mut body = body;
        let retryable = idempotent && body.is_none();
        for _attempt in 0..2 {
            let pooled = self.pooled();
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => stream,
                None => self.connect(limits.connect_timeout).await?,
            };
            match round_trip(stream, head.clone(), body.take(), expect_body, limits.timeout).await {
                Ok((exchanged, reusable)) => {
                    if let Some(stream) = reusable {
                        self.give_back(stream, limits.pool_connections_max);
                    }
                    return Ok(exchanged);
                }
                Err(RoundTrip::NothingBack(_)) if reused && retryable && self.admission.try_retry() => continue,
                Err(RoundTrip::NothingBack(error) | RoundTrip::Failed(error)) => return Err(error),
            }
        }
        Err(OriginError::Io(std::io::Error::other("the origin closed two connections in a row")))
    }

    /// An idle pooled connection the origin has not closed. A closed one
    /// is readable (end of file): found with a non-blocking peek, which
    /// keeps a POST from being sent on it and failing after the fact.
    fn pooled(&self) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        while let Some(stream) = idle.pop() {
            let mut byte = 0u8;
            // SAFETY: the fd is open while `stream` lives; one byte of our own buffer.
            let peeked = unsafe {
                libc::recv(stream.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
            };
            let would_block = peeked < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
            if would_block {
                return Some(stream);
            }
        }
        None
    }

    async fn connect(&self, timeout: Duration) -> Result<TcpStream, OriginError> {
        let stream = match monoio::time::timeout(timeout, TcpStream::connect(self.address.address)).await {
            Err(_) => Err(OriginError::ConnectTimeout),
            Ok(Err(error)) => Err(OriginError::Connect(error)),
            Ok(Ok(stream)) => Ok(stream),
        };
        if stream.is_err() {
            let now_ms = crate::runtime::unix_ms(std::time::SystemTime::now());
            self.down_until_ms.set(now_ms + self.health.interval_ms());
        }
        let stream = stream?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Picks the next origin round-robin: a healthy one whose breaker admits
/// the request, else an unhealthy one that admits it (health checks can
/// lag). Returns its index and whether it is the breaker's probe.
pub fn pick(origins: &[Origin], next: &Cell<usize>, now_ms: u64) -> Result<(usize, bool), OriginError> {
    let count = origins.len();
    let start = next.get();
    next.set((start + 1) % count);
    for healthy_only in [true, false] {
        for step in 0..count {
            let index = (start + step) % count;
            let origin = &origins[index];
            if healthy_only && !origin.healthy(now_ms) {
                continue;
            }
            match origin.breaker.borrow_mut().admit(now_ms) {
                Admit::Yes => return Ok((index, false)),
                Admit::Probe => return Ok((index, true)),
                Admit::No => {}
            }
        }
    }
    Err(OriginError::CircuitOpen)
}

enum RoundTrip {
    /// The request may not have reached the origin (write failed, or the
    /// connection closed before any response byte).
    NothingBack(OriginError),
    Failed(OriginError),
}

/// Writes the request (each write waiting at most `timeout` for the origin
/// to take bytes), then reads the answer's head and, when short, its body,
/// within `timeout`. Returns the answer and the stream when it may carry
/// another exchange now (a body still streaming keeps it in the answer).
async fn round_trip(
    mut stream: TcpStream,
    head: Bytes,
    body: Option<StreamedBody>,
    expect_body: bool,
    timeout: Duration,
) -> Result<(Exchanged, Option<TcpStream>), RoundTrip> {
    let sent = monoio::time::timeout(timeout, stream.write_all(head)).await;
    match sent {
        Err(_) => return Err(RoundTrip::NothingBack(OriginError::Timeout)),
        Ok((Err(error), _)) => return Err(RoundTrip::NothingBack(OriginError::Io(error))),
        Ok((Ok(_), _)) => {}
    }
    if let Some(body) = body {
        send_body(&mut stream, body, timeout).await.map_err(RoundTrip::Failed)?;
    }
    match monoio::time::timeout(timeout, receive(stream, expect_body)).await {
        Err(_) => Err(RoundTrip::Failed(OriginError::Timeout)),
        Ok(result) => result,
    }
}

/// Streams a client's request body to the origin, chunked when its length
/// is unknown. A body that breaks off is an error: the origin got a short
/// request, and the connection is not reused.
async fn send_body(stream: &mut TcpStream, body: StreamedBody, timeout: Duration) -> Result<(), OriginError> {
    let StreamedBody { mut reader, chunked } = body;
    let mut first = true;
    while let Some(chunk) = reader.next().await {
        let chunk = chunk.map_err(|_| OriginError::RequestBody)?;
        if chunk.is_empty() {
            continue;
        }
        if chunked {
            // The CRLF ending a chunk goes out with the next size line.
            let open = if first { "" } else { "\r\n" };
            write_within(stream, Bytes::from(format!("{open}{:x}\r\n", chunk.len())), timeout).await?;
        }
        first = false;
        write_within(stream, chunk, timeout).await?;
    }
    if chunked {
        let last: &'static [u8] = if first { b"0\r\n\r\n" } else { b"\r\n0\r\n\r\n" };
        write_within(stream, Bytes::from_static(last), timeout).await?;
    }
    Ok(())
}

/// Writes all of `bytes`, each wait for the origin to take some at most `timeout`.
async fn write_within(stream: &mut TcpStream, bytes: Bytes, timeout: Duration) -> Result<(), OriginError> {
    match monoio::time::timeout(timeout, stream.write_all(bytes)).await {
        Err(_) => Err(OriginError::Timeout),
        Ok((Err(error), _)) => Err(OriginError::Io(error)),
        Ok((Ok(_), _)) => Ok(()),
    }
}

/// Reads the answer's head, then its body while it stays within
/// [`BODY_BUFFERED_BYTES_MAX`]; a longer one is left on the connection.
async fn receive(mut stream: TcpStream, expect_body: bool) -> Result<(Exchanged, Option<TcpStream>), RoundTrip> {
    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    let head = loop {
        if let Some(head) = parse_head(&mut input, expect_body).map_err(|e| RoundTrip::Failed(e.into()))? {
            break head;
        }
        if input.len() == input.capacity() {
            input.reserve(input.capacity());
        }
        let length = input.len();
        let (read, buffer) = stream.read(input.slice_mut(length..)).await;
        input = buffer.into_inner();
        match read {
            Ok(0) => {
                let error = OriginError::Io(std::io::ErrorKind::UnexpectedEof.into());
                return Err(if length == 0 { RoundTrip::NothingBack(error) } else { RoundTrip::Failed(error) });
            }
            Ok(_) => {}
            Err(error) if length == 0 => return Err(RoundTrip::NothingBack(OriginError::Io(error))),
            Err(error) => return Err(RoundTrip::Failed(OriginError::Io(error))),
        }
    };
    let mut decoder = head.body_decoder();
    let mut rest = BytesMut::from(&input[head.length..]);
    drop(input);
    let mut body: Vec<Bytes> = Vec::new();
    let mut body_bytes = 0;
    let mut eof = false;
    loop {
        match decoder.step(&mut rest).map_err(|e| RoundTrip::Failed(e.into()))? {
            BodyStep::Data(chunk) => {
                body_bytes += chunk.len();
                body.push(chunk);
                continue;
            }
            BodyStep::End => {
                let reusable = head.keep_alive && !eof && rest.is_empty() && !decoder.until_close();
                let response = whole(head.response(), body);
                let length = Some(response.body.len() as u64);
                return Ok((Exchanged { response, rest: None, length }, reusable.then_some(stream)));
            }
            BodyStep::More if body_bytes >= BODY_BUFFERED_BYTES_MAX => {
                let mut response = head.response().clone();
                // What arrived with the head goes first.
                let mut prefix = BytesMut::new();
                for chunk in body {
                    prefix.extend_from_slice(&chunk);
                }
                response.body = prefix.freeze();
                let source = BodySource {
                    stream,
                    input: rest,
                    decoder,
                    keep_alive: head.keep_alive,
                    ended: false,
                    permit: None,
                };
                let length = head.body_length();
                return Ok((Exchanged { response, rest: Some(source), length }, None));
            }
            BodyStep::More => {}
        }
        rest.reserve(READ_BYTES);
        let length = rest.len();
        let (read, buffer) = stream.read(std::mem::take(&mut rest).slice_mut(length..)).await;
        rest = buffer.into_inner();
        match read {
            Ok(0) => {
                decoder.at_eof().map_err(|e| RoundTrip::Failed(e.into()))?;
                eof = true;
            }
            Ok(_) => {}
            Err(error) => return Err(RoundTrip::Failed(OriginError::Io(error))),
        }
    }
}

/// The head's response with its whole body.
fn whole(head: &OriginResponse, body: Vec<Bytes>) -> OriginResponse {
    let body = match body.len() {
        0 => Bytes::new(),
        1 => body.into_iter().next().expect("one chunk"),
        _ => Bytes::from(body.concat()),
    };
    OriginResponse { body, ..head.clone() }
}

#[cfg(test)]
mod tests;
