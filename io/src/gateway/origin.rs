//! The origin client of one core: a keep-alive pool per origin, connect
//! and response timeouts, round-robin over healthy origins, active health
//! checks and the per-origin circuit breaker.
//!
//! A request goes out as bytes the gateway built; the response comes back
//! whole (its body bounded by [`RESPONSE_BYTES_MAX`]), de-chunked, with its
//! hop-by-hop and framing fields removed.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_shards::breaker::{Admit, Breaker};

use crate::http::codec::{Chunked, Limits};
use crate::http::response::Response;

/// Largest origin response body; larger → 502 (the gateway buffers bodies).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Largest origin response head.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Header fields in one origin response; more → 502.
const RESPONSE_HEADERS_MAX: usize = 96;
/// Read buffer for origin responses, grown for larger ones.
const READ_BYTES: usize = 16 * 1024;
/// How often each core probes every origin with a TCP connect.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// One `--origin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginAddress {
    /// As configured, for logs and metric labels.
    pub url: String,
    pub address: SocketAddr,
}

/// One origin as one core sees it.
pub struct Origin {
    pub address: OriginAddress,
    /// Idle keep-alive connections, at most `--origin-pool`.
    idle: RefCell<Vec<TcpStream>>,
    /// The last health check (or connect) succeeded.
    pub healthy: Cell<bool>,
    pub breaker: RefCell<Breaker>,
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
    #[error("the origin sent a malformed response: {0}")]
    Malformed(&'static str),
    #[error("the origin response is larger than the gateway buffers")]
    TooLarge,
    #[error("the circuit to every origin is open")]
    CircuitOpen,
}

impl OriginError {
    /// The problem response a client gets for this failure (SPEC §7: connect
    /// failures and bad answers 502, a response timeout 504, an open circuit 503).
    pub fn response(&self) -> Response {
        match self {
            OriginError::Timeout => Response::problem(504, &self.to_string()),
            OriginError::CircuitOpen => Response::overloaded(&self.to_string()),
            _ => Response::problem(502, &self.to_string()),
        }
    }
}

/// A complete origin response.
#[derive(Clone, Debug, Default)]
pub struct OriginResponse {
    pub status: u16,
    pub reason: Bytes,
    /// End-to-end fields, each as `\r\nName: value`; hop-by-hop, framing,
    /// `Date` and `Age` removed (the gateway sends its own).
    pub headers: Bytes,
    pub body: Bytes,
    pub fields: CacheFields,
}

/// The response fields cache decisions read.
#[derive(Clone, Debug, Default)]
pub struct CacheFields {
    pub cache_control: Option<Bytes>,
    pub expires: Option<Bytes>,
    pub date: Option<Bytes>,
    pub age: Option<Bytes>,
    pub vary: Option<Bytes>,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
}

/// Timeouts and pool size of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeLimits {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool: usize,
}

impl Origin {
    pub fn new(address: OriginAddress, breaker: Breaker) -> Origin {
        Origin { address, idle: RefCell::new(Vec::new()), healthy: Cell::new(true), breaker: RefCell::new(breaker) }
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Sends `request` and reads the response. A pooled connection that
    /// the origin closed meanwhile is retried once on a new connection when
    /// the request is idempotent (nothing came back, so it did not run).
    pub async fn exchange(
        &self,
        request: Bytes,
        expect_body: bool,
        idempotent: bool,
        limits: ExchangeLimits,
    ) -> Result<OriginResponse, OriginError> {
        for _attempt in 0..2 {
            let pooled = self.pooled();
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => stream,
                None => self.connect(limits.connect_timeout).await?,
            };
            let exchanged =
                monoio::time::timeout(limits.timeout, round_trip(stream, request.clone(), expect_body)).await;
            match exchanged {
                Err(_) => return Err(OriginError::Timeout),
                Ok(Ok((response, reusable))) => {
                    if let Some(stream) = reusable {
                        let mut idle = self.idle.borrow_mut();
                        if idle.len() < limits.pool {
                            idle.push(stream);
                        }
                    }
                    return Ok(response);
                }
                Ok(Err(RoundTrip::NothingBack(_))) if reused && idempotent => continue,
                Ok(Err(RoundTrip::NothingBack(error) | RoundTrip::Failed(error))) => return Err(error),
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
        self.healthy.set(stream.is_ok());
        let stream = stream?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// One active health check: a TCP connect within `timeout`.
    pub async fn check(&self, timeout: Duration) {
        if let Ok(stream) = self.connect(timeout).await {
            drop(stream);
        }
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
            if healthy_only && !origin.healthy.get() {
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

/// Writes the request and reads one response. Returns the response and the
/// stream when it may carry another exchange.
async fn round_trip(
    mut stream: TcpStream,
    request: Bytes,
    expect_body: bool,
) -> Result<(OriginResponse, Option<TcpStream>), RoundTrip> {
    let (written, _) = stream.write_all(request).await;
    written.map_err(|e| RoundTrip::NothingBack(OriginError::Io(e)))?;
    let mut input: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut head: Option<Head> = None;
    let mut chunked_body = Vec::new();
    loop {
        if head.is_none() {
            head = parse_head(&mut input, expect_body).map_err(RoundTrip::Failed)?;
        }
        if let Some(head) = &mut head {
            if let Some(end) = head.body_end(&input, &mut chunked_body).map_err(RoundTrip::Failed)? {
                let body = match head.framing {
                    BodyFraming::Chunked(_) => Bytes::from(std::mem::take(&mut chunked_body)),
                    _ => Bytes::copy_from_slice(&input[head.length..end]),
                };
                let reusable =
                    head.keep_alive && end == input.len() && !matches!(head.framing, BodyFraming::UntilClose);
                let response = head.take_response(body);
                return Ok((response, reusable.then_some(stream)));
            }
        }
        if input.len() == input.capacity() {
            input.reserve(input.capacity());
        }
        let length = input.len();
        let (read, buffer) = stream.read(input.slice_mut(length..)).await;
        input = buffer.into_inner();
        match read {
            Ok(0) => {
                if let Some(head) = head.as_mut().filter(|h| matches!(h.framing, BodyFraming::UntilClose)) {
                    let body = Bytes::copy_from_slice(&input[head.length..]);
                    return Ok((head.take_response(body), None));
                }
                let error = OriginError::Io(std::io::ErrorKind::UnexpectedEof.into());
                return Err(if length == 0 { RoundTrip::NothingBack(error) } else { RoundTrip::Failed(error) });
            }
            Ok(_) => {}
            Err(error) if length == 0 => return Err(RoundTrip::NothingBack(OriginError::Io(error))),
            Err(error) => return Err(RoundTrip::Failed(OriginError::Io(error))),
        }
    }
}

#[derive(Debug)]
enum BodyFraming {
    None,
    Length(usize),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug)]
struct Head {
    /// Bytes of the head.
    length: usize,
    keep_alive: bool,
    framing: BodyFraming,
    response: OriginResponse,
}

impl Head {
    /// The end offset of the message once its body is complete.
    fn body_end(&mut self, input: &[u8], chunked_body: &mut Vec<u8>) -> Result<Option<usize>, OriginError> {
        let limits = Limits { head_bytes_max: RESPONSE_HEAD_BYTES_MAX, body_bytes_max: RESPONSE_BYTES_MAX };
        match &mut self.framing {
            BodyFraming::None => Ok(Some(self.length)),
            BodyFraming::Length(length) => Ok((input.len() >= self.length + *length).then_some(self.length + *length)),
            BodyFraming::Chunked(chunked) => {
                chunked.advance(input, chunked_body, limits).map_err(|error| match error {
                    crate::http::codec::HttpError::BodyTooLarge => OriginError::TooLarge,
                    _ => OriginError::Malformed("bad chunked framing"),
                })
            }
            BodyFraming::UntilClose if input.len() - self.length > RESPONSE_BYTES_MAX => Err(OriginError::TooLarge),
            BodyFraming::UntilClose => Ok(None),
        }
    }

    fn take_response(&mut self, body: Bytes) -> OriginResponse {
        OriginResponse { body, ..std::mem::take(&mut self.response) }
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields the gateway
/// sets itself: never forwarded in either direction.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"proxy-authorization",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether `name` is listed in a `Connection` field value (also hop-by-hop).
pub fn named_by_connection(connection: &[u8], name: &[u8]) -> bool {
    connection.split(|&b| b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

/// Parses the response head once it is in `input`, skipping interim (1xx)
/// responses. None: more input needed.
fn parse_head(input: &mut Vec<u8>, expect_body: bool) -> Result<Option<Head>, OriginError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut parsed = httparse::Response::new(&mut fields);
        let length = match parsed.parse(input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if input.len() > RESPONSE_HEAD_BYTES_MAX => {
                return Err(OriginError::Malformed("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(OriginError::Malformed("unparsable response head")),
        };
        let status = parsed.code.expect("complete parse has a status");
        if (100..200).contains(&status) && status != 101 {
            input.drain(..length);
            continue;
        }
        if status == 101 {
            return Err(OriginError::Malformed("the origin switched protocols"));
        }
        return head_of(&parsed, length, expect_body).map(Some);
    }
}

fn head_of(parsed: &httparse::Response<'_, '_>, length: usize, expect_body: bool) -> Result<Head, OriginError> {
    let status = parsed.code.expect("complete parse has a status");
    let connection: Vec<u8> = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.iter().copied().chain(*b","))
        .collect();
    let mut fields = CacheFields::default();
    let mut headers = Vec::with_capacity(512);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(field.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            let value = value.ok_or(OriginError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|c| c != value) {
                return Err(OriginError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(value);
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = field.value.trim_ascii().to_ascii_lowercase().ends_with(b"chunked");
        }
        let value = || Some(Bytes::copy_from_slice(field.value.trim_ascii()));
        match field.name.to_ascii_lowercase().as_str() {
            "cache-control" => fields.cache_control = join(fields.cache_control.take(), field.value),
            "expires" => fields.expires = value(),
            "date" => fields.date = value(),
            "age" => fields.age = value(),
            "vary" => fields.vary = join(fields.vary.take(), field.value),
            "etag" => fields.etag = value(),
            "last-modified" => fields.last_modified = value(),
            _ => {}
        }
        let dropped = is_hop_by_hop(name)
            || named_by_connection(&connection, name)
            || name.eq_ignore_ascii_case(b"date")
            || name.eq_ignore_ascii_case(b"age");
        if !dropped {
            headers.extend_from_slice(b"\r\n");
            headers.extend_from_slice(name);
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(field.value);
        }
    }
    let bodyless = !expect_body || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = match (bodyless, chunked, content_length) {
        (true, _, _) => BodyFraming::None,
        (false, true, _) => BodyFraming::Chunked(Chunked::new(length)),
        (false, false, Some(n)) if n > RESPONSE_BYTES_MAX => return Err(OriginError::TooLarge),
        (false, false, Some(n)) => BodyFraming::Length(n),
        (false, false, None) => BodyFraming::UntilClose,
    };
    let version_minor = parsed.version.unwrap_or(1);
    let keep_alive = version_minor == 1 && !named_by_connection(&connection, b"close");
    let response = OriginResponse {
        status,
        reason: Bytes::copy_from_slice(parsed.reason.unwrap_or("").as_bytes()),
        headers: Bytes::from(headers),
        body: Bytes::new(),
        fields,
    };
    Ok(Head { length, keep_alive, framing, response })
}

/// Joins repeated list field lines with ", " (RFC 9110 §5.3).
fn join(existing: Option<Bytes>, value: &[u8]) -> Option<Bytes> {
    match existing {
        None => Some(Bytes::copy_from_slice(value)),
        Some(first) => Some(Bytes::from([&first[..], b", ", value].concat())),
    }
}

#[cfg(test)]
mod tests;
