//! A simulated origin API for gateway scenarios and tests: every path
//! answers after a configurable latency, with a configurable error rate,
//! `Cache-Control` and body size, a stable per-path `ETag` (so conditional
//! revalidation gets `304`), and counters at `GET /_origin/stats`.
//!
//! With `max_concurrency` the origin has a capacity, as an API in front of
//! a database pool does: at most that many requests are served at once,
//! the others wait in its own queue (first in, first out). Its latency can
//! be changed while it runs (`GET /_origin/latency?ms=N`), for brown-outs.
//!
//! Writes (any method but GET and HEAD) answered `200` are counted by
//! their `Idempotency-Key`: `writes` distinct keys, `write_repeats` the
//! answers to a key already answered (a gateway's at-least-once delivery
//! repeating itself).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How the origin behaves.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    pub latency: Duration,
    /// Fraction of requests answered `500`.
    pub error_rate: f64,
    /// `Cache-Control` of successful GET responses; empty sends none.
    pub cache_control: String,
    pub body_bytes: usize,
    /// Requests served at once; more wait. 0: no limit.
    pub max_concurrency: usize,
    /// Header fields (`Name: value`) added to every GET answer; `{path}`
    /// stands for the request's path.
    pub headers: Vec<String>,
}

/// What the origin counts, shown at `/_origin/stats`.
#[derive(Default)]
struct Counters {
    served: Cell<u64>,
    /// Being served (past the queue).
    in_flight: Cell<usize>,
    in_flight_max: Cell<usize>,
    queued: Cell<usize>,
    queued_max: Cell<usize>,
    latency: Cell<Duration>,
    /// `Idempotency-Key`s of the writes answered `200`.
    writes: std::cell::RefCell<std::collections::HashSet<String>>,
    write_repeats: Cell<u64>,
    waiters: std::cell::RefCell<std::collections::VecDeque<std::task::Waker>>,
}

impl Counters {
    /// Waits for a place among the `max` served at once (0: none needed),
    /// behind those already waiting.
    async fn enter(&self, max: usize) {
        if max > 0 && (self.in_flight.get() >= max || self.queued.get() > 0) {
            self.queued.set(self.queued.get() + 1);
            self.queued_max.set(self.queued_max.get().max(self.queued.get()));
            std::future::poll_fn(|cx| {
                if self.in_flight.get() < max {
                    return std::task::Poll::Ready(());
                }
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                std::task::Poll::Pending
            })
            .await;
            self.queued.set(self.queued.get() - 1);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.in_flight_max.set(self.in_flight_max.get().max(self.in_flight.get()));
    }

    fn leave(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if let Some(waker) = self.waiters.borrow_mut().pop_front() {
            waker.wake();
        }
    }

    /// The stats body; the maxima restart from the current values, so a
    /// poller sees each interval's peak.
    fn stats(&self) -> String {
        let body = format!(
            "{{\"requests\":{},\"in_flight\":{},\"in_flight_max\":{},\"queued\":{},\"queued_max\":{},\"latency_ms\":{},\"writes\":{},\"write_repeats\":{}}}",
            self.served.get(),
            self.in_flight.get(),
            self.in_flight_max.get(),
            self.queued.get(),
            self.queued_max.get(),
            self.latency.get().as_millis(),
            self.writes.borrow().len(),
            self.write_repeats.get()
        );
        self.in_flight_max.set(self.in_flight.get());
        self.queued_max.set(self.queued.get());
        body
    }
}

/// Largest request head the origin reads.
const HEAD_BYTES_MAX: usize = 16 * 1024;

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: OriginConfig) -> Result<()> {
    let served = Rc::new(Counters::default());
    served.latency.set(config.latency);
    let config = Rc::new(config);
    let mut seed = 1u64;
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        stream.set_nodelay(true)?;
        seed += 1;
        monoio::spawn(connection(stream, Rc::clone(&config), Rc::clone(&served), seed));
    }
}

/// Binds `addr` (port 0 picks one) and returns the listener and its address.
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn connection(mut stream: TcpStream, config: Rc<OriginConfig>, served: Rc<Counters>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut input: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let (head, body_length, method, path, if_none_match, idempotency_key) = loop {
            match parse(&input) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if input.len() < HEAD_BYTES_MAX => {}
                _ => return,
            }
            if input.capacity() - input.len() < 4096 {
                input.reserve(8192);
            }
            let length = input.len();
            let (read, buffer) = stream.read(input.slice_mut(length..)).await;
            input = buffer.into_inner();
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        };
        // Read and discard the request body.
        while input.len() < head + body_length {
            let length = input.len();
            input.reserve(head + body_length - length);
            let (read, buffer) = stream.read(input.slice_mut(length..)).await;
            input = buffer.into_inner();
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
        input.drain(..head + body_length);
        let response = if path == "/_origin/stats" {
            let body = served.stats();
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        } else if let Some(ms) = path.strip_prefix("/_origin/latency?ms=") {
            served.latency.set(Duration::from_millis(ms.parse().unwrap_or(0)));
            "HTTP/1.1 204 No Content\r\n\r\n".to_string()
        } else {
            served.served.set(served.served.get() + 1);
            served.enter(config.max_concurrency).await;
            let latency = served.latency.get();
            if !latency.is_zero() {
                monoio::time::sleep(latency).await;
            }
            served.leave();
            let fail = rng.random::<f64>() < config.error_rate;
            if let Some(key) = idempotency_key.filter(|_| !fail && !matches!(method.as_str(), "GET" | "HEAD")) {
                if !served.writes.borrow_mut().insert(key) {
                    served.write_repeats.set(served.write_repeats.get() + 1);
                }
            }
            answer(&config, &method, &path, if_none_match.as_deref(), fail)
        };
        let (written, _) = stream.write_all(response.into_bytes()).await;
        if written.is_err() {
            return;
        }
    }
}

type Parsed = (usize, usize, String, String, Option<String>, Option<String>);

/// Parses a request head: its length, body length, method, path,
/// If-None-Match, Idempotency-Key.
fn parse(input: &[u8]) -> Result<Option<Parsed>> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let head = match request.parse(input)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(head) => head,
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body_length = header("content-length").map(|v| v.trim().parse()).transpose()?.unwrap_or(0);
    let if_none_match = header("if-none-match");
    Ok(Some((
        head,
        body_length,
        request.method.unwrap_or("GET").to_string(),
        request.path.unwrap_or("/").to_string(),
        if_none_match,
        header("idempotency-key"),
    )))
}

/// Builds the response to one request.
pub fn answer(config: &OriginConfig, method: &str, path: &str, if_none_match: Option<&str>, fail: bool) -> String {
    if fail {
        let body = "{\"error\":\"simulated failure\"}";
        return format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    if !matches!(method, "GET" | "HEAD") {
        return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stored\":true}"
            .to_string();
    }
    let etag = format!("\"{:016x}\"", fnv1a(path.as_bytes()));
    let cache_control = if config.cache_control.is_empty() {
        String::new()
    } else {
        format!("Cache-Control: {}\r\n", config.cache_control)
    };
    if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n{cache_control}\r\n");
    }
    let body = "x".repeat(config.body_bytes);
    let body = if method == "HEAD" { "" } else { &body };
    let extra: String = config.headers.iter().map(|h| format!("{}\r\n", h.replace("{path}", path))).collect();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nETag: {etag}\r\n{cache_control}{extra}\r\n{body}",
        config.body_bytes
    )
}

/// FNV-1a: a stable tag per path; quality does not matter here.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OriginConfig {
        OriginConfig {
            headers: vec!["Surrogate-Key: all {path}".to_string()],
            latency: Duration::ZERO,
            error_rate: 0.0,
            cache_control: "max-age=1".to_string(),
            body_bytes: 4,
            max_concurrency: 0,
        }
    }

    #[test]
    fn get_revalidate_fail_and_write() {
        let ok = answer(&config(), "GET", "/a", None, false);
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n")
                && ok.contains("Cache-Control: max-age=1\r\n")
                && ok.contains("Surrogate-Key: all /a\r\n")
                && ok.ends_with("\r\n\r\nxxxx")
        );
        let etag = ok.split("ETag: ").nth(1).unwrap().split("\r\n").next().unwrap().to_string();
        let not_modified = answer(&config(), "GET", "/a", Some(&etag), false);
        assert!(not_modified.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{not_modified}");
        assert!(answer(&config(), "GET", "/b", Some(&etag), false).starts_with("HTTP/1.1 200"));
        assert!(answer(&config(), "GET", "/a", None, true).starts_with("HTTP/1.1 500"));
        assert!(answer(&config(), "POST", "/a", None, false).contains("{\"stored\":true}"));
        let head = answer(&config(), "HEAD", "/a", None, false);
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parses_heads_with_bodies() {
        let request =
            b"PUT /x HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nIf-None-Match: \"t\"\r\nIdempotency-Key: w-1\r\n\r\nabc";
        let (head, body, method, path, tag, key) = parse(request).unwrap().unwrap();
        assert_eq!(
            (head + body, method.as_str(), path.as_str(), tag.as_deref(), key.as_deref()),
            (request.len(), "PUT", "/x", Some("\"t\""), Some("w-1"))
        );
        assert!(parse(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
    }
}
