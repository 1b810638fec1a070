//! One load-generator connection: HTTP/1.1 requests out, responses parsed
//! and timed as they come back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Read buffer size; grows for larger responses.
const READ_BYTES: usize = 64 * 1024;
/// Longest latency the histograms hold: a minute, in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// What a run of requests produced on one or more connections.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Microseconds from a request's (intended) send time to its response.
    pub latency_us: Histogram<u64>,
    pub responses: u64,
    /// Responses by status class: index 1 for 1xx ... 5 for 5xx.
    pub by_class: [u64; 6],
    pub status_429: u64,
    pub status_503: u64,
    /// Responses whose status [`is_error`] counts.
    pub error_statuses: u64,
    /// Requests that got no response: connection errors and timeouts.
    pub failures: u64,
}

/// Whether a status counts as an error in the report: 5xx (503 included)
/// and 4xx, except 404 (a miss is a valid answer from a key-value store)
/// and 429 (reported in its own column: a policy, not a failure).
pub fn is_error(status: u16) -> bool {
    !(200..400).contains(&status) && status != 404 && status != 429
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
            responses: 0,
            by_class: [0; 6],
            status_429: 0,
            status_503: 0,
            error_statuses: 0,
            failures: 0,
        }
    }

    pub fn record(&mut self, status: u16, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.latency_us.record(micros).expect("clamped into bounds");
        self.responses += 1;
        self.by_class[usize::from(status / 100).min(5)] += 1;
        self.status_429 += u64::from(status == 429);
        self.status_503 += u64::from(status == 503);
        self.error_statuses += u64::from(is_error(status));
    }

    pub fn merge(&mut self, other: &Stats) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.responses += other.responses;
        for (mine, theirs) in self.by_class.iter_mut().zip(other.by_class) {
            *mine += theirs;
        }
        self.status_429 += other.status_429;
        self.status_503 += other.status_503;
        self.error_statuses += other.error_statuses;
        self.failures += other.failures;
    }

    /// Requests that failed: no response (connection error, timeout), or a
    /// status [`is_error`] counts.
    pub fn errors(&self) -> u64 {
        self.failures + self.error_statuses
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// A parsed response head: its status, what a cache made of it, and the
/// bytes the whole response takes.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub status: u16,
    pub class: Class,
    pub length: usize,
}

/// What a cache in front of an origin made of a response, from its
/// `X-Cache` (shardgate; nginx's `$upstream_cache_status` and the Varnish
/// bench configuration send the same words) and its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Hit,
    /// Served by the origin (miss, pass, revalidation).
    Miss,
    Stale,
    /// 503: refused for overload.
    Rejected,
    /// Any other error status.
    Failed,
}

pub const CLASSES: [(Class, &str); 5] = [
    (Class::Hit, "hit"),
    (Class::Miss, "miss"),
    (Class::Stale, "stale"),
    (Class::Rejected, "rejected"),
    (Class::Failed, "failed"),
];

fn class_of(status: u16, x_cache: Option<&[u8]>) -> Class {
    match (status, x_cache) {
        (503, _) => Class::Rejected,
        (500.., _) => Class::Failed,
        (_, Some(b"HIT")) => Class::Hit,
        // The key-value API sends no X-Cache: a 200 to a read is served
        // from the store, counted with the hits (the open loop counts a
        // write's 200 or 201 with the rest).
        (200, None) => Class::Hit,
        (_, Some(b"STALE" | b"UPDATING")) => Class::Stale,
        _ => Class::Miss,
    }
}

/// Parses the response at the start of `buffer`. `Ok(None)`: incomplete.
/// Responses to HEAD are not expected: every response is framed by its
/// status and Content-Length.
pub fn parse_response(buffer: &[u8]) -> Result<Option<Parsed>> {
    // Small on purpose: the array is zeroed per response, and the servers
    // measured send at most 7 header fields.
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut fields);
    let head = match response.parse(buffer).context("malformed response")? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(head) => head,
    };
    let status = response.code.context("no status")?;
    let bodyless = status < 200 || status == 204 || status == 304;
    let body = if bodyless {
        0
    } else {
        let field = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
        let value = field.context("response without Content-Length")?.value;
        std::str::from_utf8(value)?.trim().parse::<usize>()?
    };
    if buffer.len() < head + body {
        return Ok(None);
    }
    let x_cache = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case("x-cache")).map(|h| h.value);
    Ok(Some(Parsed { status, class: class_of(status, x_cache), length: head + body }))
}

/// A client connection with its unparsed input.
pub struct Conn {
    pub stream: TcpStream,
    input: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, input: Vec::with_capacity(READ_BYTES) })
    }

    /// Sends one request and returns its status and body.
    pub async fn request(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        let (written, _) = self.stream.write_all(request.to_vec()).await;
        written?;
        loop {
            if let Some(parsed) = parse_response(&self.input)? {
                let response: Vec<u8> = self.input.drain(..parsed.length).collect();
                let head = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
                return Ok((parsed.status, response[head..].to_vec()));
            }
            self.fill().await?;
        }
    }

    /// Takes the next complete response out of the input; its status.
    pub fn next_response(&mut self) -> Result<Option<u16>> {
        Ok(self.next_classified()?.map(|(status, _)| status))
    }

    /// The next buffered response's status and class, if complete.
    pub fn next_classified(&mut self) -> Result<Option<(u16, Class)>> {
        match parse_response(&self.input)? {
            Some(parsed) => {
                self.input.drain(..parsed.length);
                Ok(Some((parsed.status, parsed.class)))
            }
            None => Ok(None),
        }
    }

    /// Writes `bytes` (`count` requests) and returns their statuses.
    pub async fn send_batch(&mut self, bytes: &[u8], count: usize) -> Result<Vec<u16>> {
        let (written, _) = self.stream.write_all(bytes.to_vec()).await;
        written?;
        let mut statuses = Vec::with_capacity(count);
        while statuses.len() < count {
            match self.next_response()? {
                Some(status) => statuses.push(status),
                None => self.fill().await?,
            }
        }
        Ok(statuses)
    }

    /// Reads more input; errors on end of stream.
    pub async fn fill(&mut self) -> Result<()> {
        if self.input.capacity() - self.input.len() < READ_BYTES / 4 {
            self.input.reserve(READ_BYTES);
        }
        let length = self.input.len();
        let buffer = std::mem::take(&mut self.input);
        let (read, buffer) = self.stream.read(buffer.slice_mut(length..)).await;
        self.input = buffer.into_inner();
        if read? == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    /// Closed loop: keeps `depth` requests in flight until `until`, then
    /// waits for the outstanding ones. Latency runs from each request's
    /// actual send time.
    pub async fn closed_loop(&mut self, request: &[u8], depth: usize, until: Instant) -> Stats {
        let mut stats = Stats::new();
        let mut sent: VecDeque<Instant> = VecDeque::with_capacity(depth);
        let mut output = Vec::with_capacity(request.len() * depth);
        let mut due = depth;
        loop {
            if due > 0 && Instant::now() < until {
                output.clear();
                for _ in 0..due {
                    output.extend_from_slice(request);
                }
                let now = Instant::now();
                sent.extend(std::iter::repeat_n(now, due));
                let (written, returned) = self.stream.write_all(output).await;
                output = returned;
                if written.is_err() {
                    stats.failures += sent.len() as u64;
                    return stats;
                }
            }
            if sent.is_empty() {
                return stats;
            }
            if let Err(_error) = self.fill().await {
                stats.failures += sent.len() as u64;
                return stats;
            }
            due = 0;
            let now = Instant::now();
            loop {
                match parse_response(&self.input) {
                    Ok(Some(parsed)) => {
                        self.input.drain(..parsed.length);
                        let started = sent.pop_front().expect("a response answers a request we sent");
                        stats.record(parsed.status, now - started);
                        due += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        stats.failures += sent.len() as u64;
                        return stats;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_content_length() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).unwrap(), Some(Parsed { status: 200, class: Class::Hit, length: ok.len() }));
        assert_eq!(parse_response(&ok[..ok.len() - 1]).unwrap(), None);
        assert_eq!(parse_response(&ok[..10]).unwrap(), None);
        let no_content = b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\nHTTP/1.1";
        assert_eq!(parse_response(no_content).unwrap(), Some(Parsed { status: 204, class: Class::Miss, length: 36 }));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn histograms_merge() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for micros in 1..=100 {
            a.record(200, Duration::from_micros(micros));
            let status = match micros % 10 {
                0 => 503,
                1 => 404,
                _ => 200,
            };
            b.record(status, Duration::from_micros(micros * 100));
        }
        b.failures = 3;
        a.merge(&b);
        assert_eq!(a.responses, 200);
        assert_eq!(a.latency_us.len(), 200);
        assert_eq!(a.status_503, 10);
        assert_eq!(a.errors(), 13);
        assert_eq!(a.latency_us.max(), a.latency_us.highest_equivalent(10_000));
        assert_eq!(a.latency_us.value_at_quantile(0.5), a.latency_us.highest_equivalent(100));
    }
}
