//! Starting the binary and speaking HTTP to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any single read may block before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The start-up lines printed before the address.
    pub shard_lines: Vec<String>,
    /// Every line the server wrote to stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0` and a fresh data dir.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(data_dir.path(), args, env);
        server._data_dir = Some(data_dir);
        server
    }

    /// Starts on an existing data directory the caller keeps (for restarts),
    /// and waits until /readyz says every shard has recovered.
    pub fn start_in(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Server::spawn_in(data_dir, args, env);
        server.wait_ready();
        server
    }

    /// Polls /readyz until 200 (bounded by attempts, not the clock).
    pub fn wait_ready(&self) {
        for _ in 0..3000 {
            if self.send("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("shardgate never became ready");
    }

    /// Starts and returns as soon as it listens, before recovery ends.
    /// Rate limiting is off unless the test sets it: most tests send far
    /// more than the default 1000/1s from one address.
    pub fn spawn_in(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
        let limit_set = args.iter().any(|a| a.starts_with("--rate-limit") || a.starts_with("--config"))
            || env.iter().any(|(name, _)| name.starts_with("SHARDGATE_RATE_LIMIT") || *name == "SHARDGATE_CONFIG");
        if !limit_set {
            command.args(["--rate-limit", "off"]);
        }
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn shardgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut shard_lines = Vec::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => match line.strip_prefix("listening on ") {
                    Some(addr) => break addr.parse().expect("address"),
                    None => shard_lines.push(line),
                },
                _ => {
                    let mut stderr = String::new();
                    child.stderr.take().unwrap().read_to_string(&mut stderr).ok();
                    panic!("shardgate exited before listening: {stderr}");
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let stderr = child.stderr.take().expect("stderr");
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&stderr_lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server { child, addr, shard_lines, stderr: stderr_lines, _data_dir: None }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One request on a fresh connection.
    pub fn send(&self, request: &str) -> Response {
        let mut client = self.client();
        client.write(request.as_bytes());
        client.response()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stderr lines so far that contain `needle`.
    pub fn stderr_lines_with(&self, needle: &str) -> Vec<String> {
        self.stderr.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// The value of a metric sample, e.g. `shardgate_keys{shard="0"}`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let body = self.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }
}

impl Drop for Server {
    /// Kills the server; when a test fails with it running, prints whether
    /// it was still alive and the last lines it logged, so a failure seen
    /// once (in CI) says what the server did.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let status = self.child.try_wait();
            let lines = self.stderr.lock().map(|lines| lines.clone()).unwrap_or_default();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("shardgate at {} (exit: {status:?}) logged, last {} lines:", self.addr, tail.len());
            for line in tail {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks an RFC 9457 problem body for this status.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let text = self.text();
        assert!(text.starts_with("{\"type\":\""), "{text}");
        assert!(text.contains(&format!("\"status\":{status},")), "{text}");
        assert!(text.contains("\"title\":\"") && text.contains("\"detail\":\""), "{text}");
    }
}

/// A raw HTTP/1.1 client that keeps unread bytes, so pipelined responses
/// can be read one after another.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buffer: Vec::new() }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn request(&mut self, request: &str) -> Response {
        self.write(request.as_bytes());
        self.response()
    }

    /// Reads one response; a response to HEAD must use `head_response`.
    pub fn response(&mut self) -> Response {
        self.read_response(false)
    }

    pub fn head_response(&mut self) -> Response {
        self.read_response(true)
    }

    fn read_response(&mut self, head: bool) -> Response {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(head_len) = parsed.parse(&self.buffer).expect("valid response head") {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse::<usize>().unwrap());
                if status >= 200 {
                    assert!(
                        headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("date")),
                        "every final response has Date"
                    );
                }
                let bodyless = head || status < 200 || status == 204 || status == 304;
                if !bodyless {
                    assert!(length.is_some(), "status {status} without Content-Length");
                }
                let body_len = if bodyless { 0 } else { length.unwrap() };
                while self.buffer.len() < head_len + body_len {
                    self.fill();
                }
                let body = self.buffer[head_len..head_len + body_len].to_vec();
                self.buffer.drain(..head_len + body_len);
                return Response { status, headers, body };
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read.expect("read (timed out?)"),
            }
        };
        assert!(n > 0, "connection closed mid-response; have {:?}", String::from_utf8_lossy(&self.buffer));
        self.buffer.extend_from_slice(&chunk[..n]);
    }

    /// True when the server closed the connection (after any buffered bytes).
    pub fn is_closed(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Reports a test that cannot run on this machine. `eprintln!` output of
/// a passing test is captured and hidden by the test runner; a write to
/// the stderr handle itself is not, so the skip and its reason show.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Polls `check` every 10 ms until it holds, at most 500 times (5 s plus
/// the checks' own time); panics naming `what` if it never does.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

/// Builds a request with a body and the usual fields.
pub fn put(path: &str, body: &str) -> String {
    format!("PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// Opens connections until one has landed on each core. The receiving core
/// is read from /metrics: a connection's requests are counted by the core
/// that accepted it.
pub fn connection_per_core(server: &Server, shards: u32) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let before: Vec<f64> = (0..shards)
            .map(|s| server.metric("shardgate_requests_total", &[("shard", &s.to_string()), ("route", "healthz")]))
            .collect();
        let mut client = server.client();
        assert_eq!(client.request(&get("/healthz")).status, 200);
        let core = (0..shards)
            .find(|&s| {
                server.metric("shardgate_requests_total", &[("shard", &s.to_string()), ("route", "healthz")])
                    > before[s as usize]
            })
            .expect("some core counted the request");
        found[core as usize].get_or_insert(client);
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("SO_REUSEPORT never spread 200 connections over {shards} cores");
}
