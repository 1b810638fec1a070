//! A scriptable origin for the gateway tests: a thread per connection,
//! keep-alive, a handler the test sets, and a record of what arrived.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the origin answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Sent verbatim as the whole response instead (for framing tests).
    pub raw: Option<Vec<u8>>,
    /// A body generated while it is written, instead of `body`.
    pub streamed: Option<Streamed>,
}

/// A body the origin writes as it generates it: `length` bytes of
/// [`pattern_byte`], in pieces of `piece` bytes, chunked or with a
/// `Content-Length`; with `gate`, it stops after `hold_after` bytes until
/// the gate opens.
#[derive(Clone)]
pub struct Streamed {
    pub length: u64,
    pub chunked: bool,
    pub piece: usize,
    pub gate: Option<Gate>,
    pub hold_after: u64,
}

/// Byte `i` of every generated body: a period (251) that no power of two
/// divides, so a piece out of place is noticed.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Longest slice [`pattern`] gives.
pub const PATTERN_SLICE_MAX: usize = 256 * 1024;

/// Bytes `offset..offset + length` of the pattern (`length` at most
/// [`PATTERN_SLICE_MAX`]), without generating them byte by byte.
pub fn pattern(offset: u64, length: usize) -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = PATTERN.get_or_init(|| (0..(PATTERN_SLICE_MAX + 251) as u64).map(pattern_byte).collect());
    let start = (offset % 251) as usize;
    &all[start..start + length]
}

/// A latch the test opens once; the origin waits on it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until open (at most a minute: a test that never opens fails on its own).
    fn wait(&self) {
        let guard = self.0 .0.lock().unwrap();
        let _ = self.0 .1.wait_timeout_while(guard, Duration::from_secs(60), |open| !*open);
    }
}

impl Reply {
    pub fn ok(cache_control: &str, body: &str) -> Reply {
        let mut headers = vec![("Content-Type".to_string(), "text/plain".to_string())];
        if !cache_control.is_empty() {
            headers.push(("Cache-Control".to_string(), cache_control.to_string()));
        }
        Reply { status: 200, headers, body: body.as_bytes().to_vec(), delay: Duration::ZERO, raw: None, streamed: None }
    }

    pub fn status(status: u16) -> Reply {
        let body = format!("status {status}").into_bytes();
        Reply { status, headers: Vec::new(), body, delay: Duration::ZERO, raw: None, streamed: None }
    }

    /// A response written byte for byte as given.
    pub fn raw(bytes: &[u8]) -> Reply {
        Reply { raw: Some(bytes.to_vec()), ..Reply::status(200) }
    }

    pub fn with(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// A 200 whose generated body is written as it is made.
    pub fn streamed(cache_control: &str, streamed: Streamed) -> Reply {
        Reply { streamed: Some(streamed), ..Reply::ok(cache_control, "") }
    }
}

impl Streamed {
    pub fn new(length: u64, chunked: bool) -> Streamed {
        Streamed { length, chunked, piece: 64 * 1024, gate: None, hold_after: 0 }
    }

    /// Stops after `bytes` until `gate` opens.
    pub fn held(mut self, bytes: u64, gate: &Gate) -> Streamed {
        self.hold_after = bytes;
        self.gate = Some(gate.clone());
        self
    }
}

type Handler = Box<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct State {
    handler: Mutex<Handler>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    in_flight_max: AtomicUsize,
    stop: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// The threads serving connections, joined by `stop`.
    connections: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Origin {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (to bring an origin back on the port it had).
    pub fn start_on(addr: SocketAddr, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind(addr).expect("bind origin");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: Mutex::new(Box::new(handler)),
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            in_flight_max: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let accept_state = Arc::clone(&state);
        let acceptor = std::thread::spawn(move || {
            while !accept_state.stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accept_state.accepted.fetch_add(1, Ordering::AcqRel);
                        let state = Arc::clone(&accept_state);
                        let connection = std::thread::spawn(move || serve(stream, state));
                        accept_state.connections.lock().unwrap().push(connection);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Origin { addr, state, acceptor: Mutex::new(Some(acceptor)) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests received for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.state.seen.lock().unwrap().iter().filter(|s| s.path == path).count()
    }

    /// Connections the origin accepted.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::Acquire)
    }

    /// Most requests the origin was answering at once.
    pub fn concurrency_max(&self) -> usize {
        self.state.in_flight_max.load(Ordering::Acquire)
    }

    /// Stops accepting and answers nothing more. Returns once the listener
    /// and every connection are closed, so a test can rely on it at once.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.lock().unwrap().take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(&mut *self.state.connections.lock().unwrap());
        for connection in connections {
            let _ = connection.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut stream: TcpStream, state: Arc<State>) {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut input = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        let Some((seen, used)) = parse(&input) else {
            match stream.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => input.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            continue;
        };
        input.drain(..used);
        let now = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        state.in_flight_max.fetch_max(now, Ordering::AcqRel);
        state.seen.lock().unwrap().push(seen.clone());
        let reply = (state.handler.lock().unwrap())(&seen);
        std::thread::sleep(reply.delay);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(streamed) = &reply.streamed {
            if write_streamed(&mut stream, &reply, streamed, &seen.method).is_err() {
                return;
            }
            continue;
        }
        let bytes = match &reply.raw {
            Some(raw) => raw.clone(),
            None => encode(&reply, &seen.method),
        };
        if stream.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// The first complete request in `input` and the bytes it used, or `None`
/// while it is partial. The shardgate under test never sends a malformed
/// request to its origin, so one is a test failure.
fn parse(input: &[u8]) -> Option<(Seen, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let head = match request.parse(input) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return None,
        Err(error) => panic!(
            "origin got a malformed request: {error}: {:?}",
            String::from_utf8_lossy(&input[..input.len().min(200)])
        ),
    };
    let headers: Vec<(String, String)> =
        request.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, used) = match chunked {
        true => dechunk(&input[head..])?,
        false => {
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            if input.len() < head + length {
                return None;
            }
            (input[head..head + length].to_vec(), length)
        }
    };
    let seen =
        Seen { method: request.method.unwrap().to_string(), path: request.path.unwrap().to_string(), headers, body };
    Some((seen, head + used))
}

/// A complete chunked body at the start of `input` (no trailers) and the
/// bytes it used; None while it is partial.
fn dechunk(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line = input[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&input[at..at + line]).unwrap().trim(), 16)
            .expect("shardgate sends valid chunk sizes");
        at += line + 2;
        if size == 0 {
            return (input.len() >= at + 2).then(|| (body, at + 2));
        }
        if input.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&input[at..at + size]);
        at += size + 2;
    }
}

fn encode(reply: &Reply, method: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} Whatever\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let bodyless = reply.status == 304 || reply.status == 204 || method == "HEAD";
    if !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !bodyless {
        bytes.extend_from_slice(&reply.body);
    }
    bytes
}

/// Writes a generated body piece by piece (see [`Streamed`]).
fn write_streamed(stream: &mut TcpStream, reply: &Reply, streamed: &Streamed, method: &str) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Whatever\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match streamed.chunked {
        true => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
        false => head.push_str(&format!("Content-Length: {}\r\n\r\n", streamed.length)),
    }
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut sent = 0u64;
    let mut held = false;
    while sent < streamed.length {
        if let Some(gate) = streamed.gate.as_ref().filter(|_| !held && sent >= streamed.hold_after) {
            held = true;
            gate.wait();
        }
        let take = (streamed.length - sent).min(streamed.piece.min(PATTERN_SLICE_MAX) as u64);
        let piece = pattern(sent, take as usize);
        if streamed.chunked {
            stream.write_all(format!("{take:x}\r\n").as_bytes())?;
            stream.write_all(piece)?;
            stream.write_all(b"\r\n")?;
        } else {
            stream.write_all(piece)?;
        }
        sent += take;
    }
    if streamed.chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}
