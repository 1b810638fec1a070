//! Gateway streaming (docs/spec.md §7, "Bodies"): origin responses stream
//! to clients while they are stored, coalesced readers share one fill as
//! it arrives, bodies larger than `--cache-object-max` pass through with
//! memory bounded by buffers, request bodies stream to the origin.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{eventually, Server, IO_TIMEOUT};
use crate::origin::{pattern, Gate, Origin, Reply, Streamed, PATTERN_SLICE_MAX};

const MIB: u64 = 1 << 20;

fn gateway(origin: &Origin, extra: &[&str]) -> Server {
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str(), "--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The head of a response read from a raw stream.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A client reading one streamed response, checking every body byte
/// against the origin's pattern as it arrives (nothing is kept).
struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Reader {
    fn get(addr: std::net::SocketAddr, request: &str) -> Reader {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        Reader { stream, buffer: Vec::new() }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 256 * 1024];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => {
                    break read
                        .unwrap_or_else(|e| panic!("read (timed out?) after {} buffered: {e}", self.buffer.len()))
                }
            }
        };
        self.buffer.extend_from_slice(&chunk[..n]);
        n
    }

    fn head(&mut self) -> Head {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(length) = parsed.parse(&self.buffer).expect("a response head") {
                let head = Head {
                    status: parsed.code.unwrap(),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                };
                self.buffer.drain(..length);
                return head;
            }
            assert!(self.fill() > 0, "closed before a head");
        }
    }

    /// Reads `length` body bytes (or to the close), checking them against
    /// the pattern from `offset`; `progress` counts them as they come,
    /// `pace` sleeps after each read (a slow client). Returns the count.
    fn body_plain(&mut self, length: Option<u64>, offset: u64, progress: &AtomicU64, pace: Duration) -> u64 {
        let mut seen = 0u64;
        loop {
            let take = (self.buffer.len() as u64).min(length.map_or(u64::MAX, |l| l - seen)) as usize;
            check_pattern(&self.buffer[..take], offset + seen);
            self.buffer.drain(..take);
            seen += take as u64;
            progress.store(seen, Ordering::Release);
            if length == Some(seen) {
                return seen;
            }
            if self.fill() == 0 {
                assert!(length.is_none(), "closed after {seen} of {length:?} bytes");
                return seen;
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
    }

    /// Reads a chunked body to its last chunk, checking the pattern.
    fn body_chunked(&mut self) -> u64 {
        let mut seen = 0u64;
        loop {
            let line_end = loop {
                if let Some(i) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(self.fill() > 0, "closed inside a chunk size line");
            };
            let size = u64::from_str_radix(std::str::from_utf8(&self.buffer[..line_end]).unwrap(), 16).unwrap();
            self.buffer.drain(..line_end + 2);
            if size == 0 {
                while self.buffer.len() < 2 {
                    assert!(self.fill() > 0);
                }
                assert_eq!(&self.buffer[..2], b"\r\n", "no trailers, then the end");
                self.buffer.drain(..2);
                return seen;
            }
            let mut left = size;
            while left > 0 {
                if self.buffer.is_empty() {
                    assert!(self.fill() > 0, "closed inside a chunk");
                }
                let take = (self.buffer.len() as u64).min(left) as usize;
                check_pattern(&self.buffer[..take], seen);
                self.buffer.drain(..take);
                seen += take as u64;
                left -= take as u64;
            }
            while self.buffer.len() < 2 {
                assert!(self.fill() > 0, "closed after {seen} bytes");
            }
            assert_eq!(&self.buffer[..2], b"\r\n");
            self.buffer.drain(..2);
        }
    }
}

fn check_pattern(bytes: &[u8], offset: u64) {
    for (i, piece) in bytes.chunks(PATTERN_SLICE_MAX).enumerate() {
        let at = offset + (i * PATTERN_SLICE_MAX) as u64;
        assert!(piece == pattern(at, piece.len()), "body bytes differ from the origin's at {at}..");
    }
}

/// The resident memory of a process (0 once it is gone).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().trim_end_matches("kB").trim());
    kib.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// Samples a process's RSS every 20 ms until stopped; returns the peak.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Acquire) {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

#[test]
fn a_200_mib_response_streams_to_a_slow_client_with_bounded_memory() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/chunked" => Reply::streamed("max-age=60", Streamed::new(200 * MIB, true)),
        _ => Reply::streamed("max-age=60", Streamed::new(200 * MIB, false)),
    });
    let server = gateway(&origin, &[]);
    let baseline = rss_bytes(server.pid());
    for (path, chunked) in [("/big", false), ("/chunked", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_rss(server.pid(), Arc::clone(&stop));
        let mut reader = Reader::get(server.addr, &format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n"));
        let head = reader.head();
        assert_eq!(head.status, 200);
        let got = match chunked {
            false => {
                assert_eq!(head.header("content-length"), Some("209715200"));
                // A slow client: a 256 KiB read, then 2 ms.
                reader.body_plain(Some(200 * MIB), 0, &AtomicU64::new(0), Duration::from_millis(2))
            }
            true => {
                assert_eq!(head.header("transfer-encoding"), Some("chunked"), "unknown length: re-framed as chunks");
                reader.body_chunked()
            }
        };
        assert_eq!(got, 200 * MIB, "{path}");
        stop.store(true, Ordering::Release);
        let peak = watcher.join().unwrap();
        assert!(peak.saturating_sub(baseline) < 64 * MIB, "{path}: RSS grew by {} MiB", (peak - baseline) / MIB);
        assert_eq!(head.header("x-cache"), Some("MISS"));
        let status = head.header("cache-status").unwrap_or_default().to_string();
        assert!(status.contains("fwd=uri-miss") && !status.contains("stored"), "{status}");
    }
    // Larger than --cache-object-max: never stored, the key passes.
    let again = server.send("GET /big HTTP/1.1\r\nHost: api.test\r\nRange: bytes=0-9\r\n\r\n");
    assert_eq!(again.status, 206, "{}", again.text());
    assert_eq!(origin.count("/big"), 2);
    let seen = origin.seen();
    assert_eq!(seen.last().unwrap().header("range"), Some("bytes=0-9"), "a range of a key too large passes through");
}

#[test]
fn coalesced_readers_all_receive_a_50_mib_object_while_it_fills() {
    const READERS: usize = 100;
    let gate = Gate::default();
    let body = Streamed::new(50 * MIB, false).held(8 * MIB, &gate);
    let origin = Origin::start(move |_| Reply::streamed("max-age=60", body.clone()));
    let server = gateway(&origin, &["--cache-object-max", "64MiB"]);
    let started = Arc::new(AtomicUsize::new(0));
    let request = "GET /large HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (addr, started) = (server.addr, Arc::clone(&started));
        readers.push(std::thread::spawn(move || {
            let mut reader = Reader::get(addr, request);
            let head = reader.head();
            assert_eq!(head.status, 200);
            let progress = Arc::new(AtomicU64::new(0));
            // Counted once the first MiB has come: before the origin may finish.
            let counted = AtomicBool::new(false);
            let mut seen = 0;
            while seen < 50 * MIB {
                let step = (seen + MIB).min(50 * MIB) - seen;
                seen += reader.body_plain(Some(step), seen, &progress, Duration::ZERO);
                if !counted.swap(true, Ordering::AcqRel) {
                    started.fetch_add(1, Ordering::AcqRel);
                }
            }
            (head.header("x-cache").map(str::to_string), seen)
        }));
    }
    // A client that hangs up mid-body cancels nothing.
    let mut quitter = Reader::get(server.addr, request);
    assert_eq!(quitter.head().status, 200);
    quitter.body_plain(Some(MIB), 0, &AtomicU64::new(0), Duration::ZERO);
    drop(quitter);
    // Every reader has its first MiB while the origin still holds 42 MiB back.
    eventually("every reader receiving the body while it fills", || started.load(Ordering::Acquire) == READERS);
    gate.open();
    for reader in readers {
        let (_, seen) = reader.join().unwrap();
        assert_eq!(seen, 50 * MIB);
    }
    assert_eq!(origin.count("/large"), 1, "one fill for everyone");
    let head_request = "HEAD /large HTTP/1.1\r\nHost: api.test\r\n\r\n";
    eventually("the fill stored", || {
        let mut client = server.client();
        client.write(head_request.as_bytes());
        client.head_response().header("x-cache") == Some("HIT")
    });
    let mut reader = Reader::get(server.addr, request);
    let head = reader.head();
    assert_eq!(head.header("x-cache"), Some("HIT"), "stored once complete");
    assert_eq!(reader.body_plain(Some(50 * MIB), 0, &AtomicU64::new(0), Duration::ZERO), 50 * MIB);
}

#[test]
fn a_chunked_fill_is_stored_and_an_http_10_client_reads_to_the_close() {
    let origin = Origin::start(|_| Reply::streamed("max-age=60", Streamed::new(3 * MIB, true)));
    let server = gateway(&origin, &[]);
    let mut first = Reader::get(server.addr, "GET /c HTTP/1.0\r\nHost: api.test\r\n\r\n");
    let head = first.head();
    assert_eq!((head.status, head.header("transfer-encoding")), (200, None), "no chunks to HTTP/1.0");
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(first.body_plain(None, 0, &AtomicU64::new(0), Duration::ZERO), 3 * MIB, "to the close");
    eventually("the fill stored", || {
        let mut client = server.client();
        client.write(b"HEAD /c HTTP/1.1\r\nHost: api.test\r\n\r\n");
        client.head_response().header("x-cache") == Some("HIT")
    });
    let hit = server.send("GET /c HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(hit.body.len() as u64, 3 * MIB);
    check_pattern(&hit.body, 0);
    assert_eq!(origin.count("/c"), 1);
}

#[test]
fn request_bodies_stream_to_the_origin() {
    let origin = Origin::start(|seen| Reply::ok("", &format!("{} bytes", seen.body.len())));
    let server = gateway(&origin, &["--max-body", "32MiB"]);
    let upload: Vec<u8> = pattern(0, 200 * 1024).repeat(40); // 8000 KiB
    let mut client = server.client();
    client.write(format!("PUT /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n", upload.len()).as_bytes());
    client.write(&upload);
    let response = client.response();
    assert_eq!((response.status, response.text()), (200, format!("{} bytes", upload.len())));
    let seen = origin.seen();
    assert_eq!(seen.last().unwrap().body, upload, "every byte, in order");
    // Chunked from the client: chunked to the origin.
    let mut chunked = Vec::new();
    for piece in upload.chunks(300_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    client.write(b"POST /up HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.write(&chunked);
    let response = client.response();
    assert_eq!(response.text(), format!("{} bytes", upload.len()));
    let last = origin.seen().pop().unwrap();
    assert_eq!(last.header("transfer-encoding"), Some("chunked"));
    // The connection goes on after a streamed body.
    assert_eq!(client.request("GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n").status, 200);
    // Past --max-body: refused, the connection closed.
    let server = gateway(&origin, &["--max-body", "1MiB"]);
    let mut client = server.client();
    client.write(b"POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2000000\r\n\r\n");
    let response = client.response();
    assert_eq!(response.status, 413);
}
