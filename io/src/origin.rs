//! The origin client of one core: a keep-alive pool per origin, connect
//! and response timeouts, round-robin over healthy origins, active health
//! checks and the per-origin circuit breaker. It knows nothing of caching.
//!
//! A request goes out as bytes the gateway built; the response comes back
//! whole (its body bounded by `RESPONSE_BYTES_MAX`), de-chunked, with its
//! hop-by-hop and framing fields removed, as `shardgate_http::origin`
//! decodes it.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::origin::{parse_head, BodyFraming, Head, OriginResponse, ResponseError};
use shardgate_http::response::Response;
use shardgate_shards::breaker::{Admit, Breaker};

use crate::admission::Admission;
use crate::config::OriginAddress;
use crate::runtime::metrics::Rejection;

/// Read buffer for origin responses, grown for larger ones.
const READ_BYTES: usize = 16 * 1024;
/// How often each core probes every origin with a TCP connect.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// One origin as one core sees it.
pub struct Origin {
    pub address: OriginAddress,
    /// `Host` for requests that carry none: the origin's address.
    host: Vec<u8>,
    /// Idle keep-alive connections, at most `--origin-pool`.
    idle: RefCell<Vec<TcpStream>>,
    /// The last health check (or connect) succeeded.
    pub healthy: Cell<bool>,
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

impl Origin {
    pub fn new(address: OriginAddress, breaker: Breaker, admission: Rc<Admission>) -> Origin {
        let host = address.address.to_string().into_bytes();
        Origin {
            address,
            host,
            idle: RefCell::new(Vec::new()),
            healthy: Cell::new(true),
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

    /// Sends `request` and reads the response. A pooled connection that
    /// the origin closed meanwhile is retried once on a new connection when
    /// the request is idempotent (nothing came back, so it did not run) and
    /// the retry budget allows.
    pub async fn exchange(
        &self,
        request: Bytes,
        expect_body: bool,
        idempotent: bool,
        limits: ExchangeSettings,
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
                        if idle.len() < limits.pool_connections_max {
                            idle.push(stream);
                        }
                    }
                    return Ok(response);
                }
                Ok(Err(RoundTrip::NothingBack(_))) if reused && idempotent && self.admission.try_retry() => continue,
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
            head = parse_head(&mut input, expect_body).map_err(|e| RoundTrip::Failed(e.into()))?;
        }
        if let Some(head) = &mut head {
            if let Some(end) = head.body_end(&input, &mut chunked_body).map_err(|e| RoundTrip::Failed(e.into()))? {
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

#[cfg(test)]
mod tests;
