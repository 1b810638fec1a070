//! The access log: one line per request (`--access-log`), written by a
//! background thread so that no event loop ever waits for a disk.
//!
//! Cores format their lines and push them onto one bounded lock-free queue
//! ([`QUEUE_LINES`]); a full queue drops the line and counts it
//! (`shardgate_access_log_dropped_total`): a slow log disk costs lines, not
//! latency. The writer thread drains the queue every few milliseconds into
//! a buffered file and flushes it; SIGHUP makes it reopen the file, for
//! logrotate's `create` and `postrotate` (nginx's `USR1`, Varnish's
//! `varnishncsa -w` on SIGHUP).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};
use crate::runtime::logging;

/// Lines waiting for the writer, all cores together; more are dropped.
pub const QUEUE_LINES: usize = 65_536;
/// How often the writer looks at the queue when it found it empty.
const WRITER_NAP: Duration = Duration::from_millis(5);

/// One request as the access log records it.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub duration_us: u64,
    /// The `X-Cache` value (gateway mode).
    pub cache: Option<&'static str>,
    /// How long the origin took to answer the head.
    pub origin_us: Option<u32>,
    /// The shard that answered.
    pub shard: u32,
}

/// The cores' end of the access log.
pub struct AccessLog {
    queue: ArrayQueue<String>,
    format: AccessLogFormat,
    reopen: AtomicBool,
    stop: AtomicBool,
}

impl AccessLog {
    /// Opens the target and starts the writer thread. None when the log is off.
    pub fn start(config: &AccessLogConfig) -> std::io::Result<Option<Arc<AccessLog>>> {
        let sink = match &config.target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Sink::Stdout(BufWriter::new(std::io::stdout())),
            AccessLogTarget::File(path) => Sink::File(BufWriter::new(open(path)?), path.clone()),
        };
        let log = Arc::new(AccessLog {
            queue: ArrayQueue::new(QUEUE_LINES),
            format: config.format,
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let writer = Arc::clone(&log);
        std::thread::Builder::new().name("shardgate-access-log".into()).spawn(move || writer.write_loop(sink))?;
        Ok(Some(log))
    }

    /// Formats and queues one line. Returns false when the queue was full
    /// and the line was dropped.
    pub fn record(&self, now: SystemTime, entry: &Entry<'_>) -> bool {
        let line = match self.format {
            AccessLogFormat::Text => text_line(now, entry),
            AccessLogFormat::Json => json_line(now, entry),
        };
        self.queue.push(line).is_ok()
    }

    /// Asks the writer to reopen its file (SIGHUP).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Asks the writer to write what is queued and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn write_loop(&self, mut sink: Sink) {
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let mut wrote = false;
            while let Some(line) = self.queue.pop() {
                wrote = true;
                if let Err(error) = sink.write_line(&line) {
                    logging::warn("access log write failed", &[("error", &error)]);
                }
            }
            if wrote {
                let _ = sink.flush();
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                sink.reopen();
            }
            if stopping {
                let _ = sink.flush();
                return;
            }
            if !wrote {
                std::thread::sleep(WRITER_NAP);
            }
        }
    }
}

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>, PathBuf),
}

impl Sink {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(line.as_bytes()),
            Sink::File(out, _) => out.write_all(line.as_bytes()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(out, _) => out.flush(),
        }
    }

    /// Reopens the file by its path (the rotated one was renamed away).
    fn reopen(&mut self) {
        let Sink::File(out, path) = self else { return };
        let _ = out.flush();
        match open(path) {
            Ok(file) => *out = BufWriter::new(file),
            Err(error) => {
                logging::warn("cannot reopen the access log", &[("path", &path.display()), ("error", &error)])
            }
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn timestamp(now: SystemTime) -> logging::Rfc3339 {
    logging::Rfc3339(now)
}

fn text_line(now: SystemTime, entry: &Entry<'_>) -> String {
    let mut line = String::with_capacity(160 + entry.target.len());
    let _ = write!(line, "ts={} client=", timestamp(now));
    match entry.client {
        Some(client) => {
            let _ = write!(line, "{client}");
        }
        None => line.push('-'),
    }
    let _ = write!(line, " method={} target=", String::from_utf8_lossy(entry.method));
    quoted(&mut line, entry.target);
    let _ = write!(line, " status={} bytes={} duration_us={} cache=", entry.status, entry.bytes, entry.duration_us);
    line.push_str(entry.cache.unwrap_or("-"));
    line.push_str(" origin_us=");
    match entry.origin_us {
        Some(us) => {
            let _ = write!(line, "{us}");
        }
        None => line.push('-'),
    }
    let _ = writeln!(line, " shard={}", entry.shard);
    line
}

fn json_line(now: SystemTime, entry: &Entry<'_>) -> String {
    let mut line = String::with_capacity(192 + entry.target.len());
    let _ = write!(line, "{{\"ts\":\"{}\",\"client\":", timestamp(now));
    match entry.client {
        Some(client) => {
            let _ = write!(line, "\"{client}\"");
        }
        None => line.push_str("null"),
    }
    line.push_str(",\"method\":");
    json(&mut line, entry.method);
    line.push_str(",\"target\":");
    json(&mut line, entry.target);
    let _ = write!(
        line,
        ",\"status\":{},\"bytes\":{},\"duration_us\":{},\"cache\":",
        entry.status, entry.bytes, entry.duration_us
    );
    match entry.cache {
        Some(cache) => {
            let _ = write!(line, "\"{cache}\"");
        }
        None => line.push_str("null"),
    }
    line.push_str(",\"origin_us\":");
    match entry.origin_us {
        Some(us) => {
            let _ = write!(line, "{us}");
        }
        None => line.push_str("null"),
    }
    let _ = writeln!(line, ",\"shard\":{}}}", entry.shard);
    line
}

/// A request-target for a text line: quoted, with `"`, `\` and bytes
/// outside printable ASCII escaped, so a line is always one line.
fn quoted(line: &mut String, bytes: &[u8]) {
    line.push('"');
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                line.push('\\');
                line.push(byte as char);
            }
            0x20..=0x7e => line.push(byte as char),
            _ => {
                let _ = write!(line, "\\x{byte:02x}");
            }
        }
    }
    line.push('"');
}

/// A JSON string of bytes that need not be UTF-8 (invalid sequences become U+FFFD).
fn json(line: &mut String, bytes: &[u8]) {
    let mut out = Vec::new();
    shardgate_http::response::json_string(&mut out, &String::from_utf8_lossy(bytes));
    line.push_str(&String::from_utf8_lossy(&out));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: Some([127, 0, 0, 1].into()),
            method: b"GET",
            target: b"/a \"b\"\x01",
            status: 200,
            bytes: 12,
            duration_us: 345,
            cache: Some("HIT"),
            origin_us: None,
            shard: 1,
        }
    }

    #[test]
    fn lines_are_one_line_each_and_json_parses() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        let text = text_line(now, &entry());
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.starts_with("ts=2025-"), "{text}");
        assert!(
            text.contains(r#"target="/a \"b\"\x01" status=200 bytes=12 duration_us=345 cache=HIT origin_us=- shard=1"#),
            "{text}"
        );
        let json = json_line(now, &entry());
        assert_eq!(json.matches('\n').count(), 1);
        assert!(json.contains(r#""target":"/a \"b\"\u0001""#), "{json}");
        assert!(
            json.contains(r#""status":200,"bytes":12,"duration_us":345,"cache":"HIT","origin_us":null,"shard":1}"#),
            "{json}"
        );
    }
}
