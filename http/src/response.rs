//! HTTP/1.1 response encoding, appended to a caller-owned buffer.
//!
//! Every response carries `Date` and, unless its status forbids a body
//! (1xx, 204, 304), `Content-Length`. Errors carry RFC 9457 problem details.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shardgate_shards::conditions::Etag;
use shardgate_shards::pieces::Pieces;

use crate::body::BodyReader;

/// `Content-Type` of every error body (RFC 9457).
pub const PROBLEM_CONTENT_TYPE: &[u8] = b"application/problem+json";
/// The problem type of a 429, as the RateLimit header fields draft names it.
pub const PROBLEM_TYPE_QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response ready to encode. Header fields shardgate may send are named
/// fields rather than a list: encoding stays allocation-free.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<Bytes>,
    pub etag: Option<Etag>,
    /// `X-Shard: owner/count` on key-value responses.
    pub shard: Option<(u32, u32)>,
    /// `Allow` on a 405, or a relayed origin response's fields.
    pub extra: Extra,
    pub retry_after_s: Option<u32>,
    /// Close the connection after this response, whatever the request asked.
    pub close: bool,
    pub body: Bytes,
}

/// What only some responses carry, in one field: every response is moved
/// a few times on the hot path, so [`Response`] is kept small.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Extra {
    #[default]
    None,
    /// `Allow` (on a 405). A reference to the list, so the enum stays two words.
    Allow(&'static &'static str),
    /// A response relayed from an origin (gateway mode).
    Proxied(Box<Proxied>),
}

/// What a relayed origin response adds to [`Response`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxied {
    pub reason: Bytes,
    /// Header fields, each as `\r\nName: value` (the gateway removed the
    /// hop-by-hop and framing fields; `Content-Length` and `Date` are ours).
    /// Shared with the stored response it comes from: not copied per hit.
    pub headers: Bytes,
    /// `Age`, in seconds.
    pub age_s: Option<u64>,
    /// `Date`: the stored or relayed response's (RFC 9110 §6.6.1); None:
    /// shardgate's clock.
    pub date: Option<[u8; 29]>,
    /// `X-Cache`.
    pub x_cache: Option<&'static str>,
    /// shardgate's member of `Cache-Status` (RFC 9211).
    pub cache_status: Option<CacheStatus>,
    /// `key` of the `Cache-Status` member (only with `--cache-status-key`).
    pub cache_key: Option<Bytes>,
    /// `Content-Range` of a 206 or 416.
    pub content_range: Option<ContentRange>,
    /// Where the body is when it is not [`Response::body`].
    pub body: ProxiedBody,
    /// How long the origin took to answer (the access log's `origin_ms`).
    pub origin_us: Option<u32>,
}

/// A relayed body that is not one buffer in [`Response::body`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxiedBody {
    /// [`Response::body`] is the whole body.
    #[default]
    Inline,
    /// A stored body in several shared pieces.
    Pieces(Pieces),
    /// A body still arriving (streamed while it is stored, or passed through).
    Stream(StreamBody),
}

/// A body read from a stream as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamBody {
    pub reader: BodyReader,
    /// Stream bytes before the body starts (the front a range skips).
    pub skip: u64,
    /// The body's length when known, sent as `Content-Length` (the stream
    /// is cut there); None: chunked to an HTTP/1.1 client, else to the close.
    pub length: Option<u64>,
}

/// A cache's member of `Cache-Status` (RFC 9211 §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Served from the cache without going forward.
    pub hit: bool,
    /// Why the request went to the origin.
    pub fwd: Option<Forward>,
    /// The origin's status when it went forward.
    pub fwd_status: Option<u16>,
    /// Seconds of freshness left (negative: stale by that much).
    pub ttl_s: Option<i64>,
    /// The origin's answer was stored.
    pub stored: bool,
    /// The request waited for another request's origin fetch.
    pub collapsed: bool,
}

/// `fwd` values of `Cache-Status` (RFC 9211 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored for the URI.
    UriMiss,
    /// Responses stored for the URI, none for this request's `Vary` values.
    VaryMiss,
    /// The stored response was stale.
    Stale,
    /// The cache does not handle this request (a cookie, hit-for-miss, an
    /// object too large to store).
    Bypass,
    /// The method's semantics send it forward (unsafe methods).
    Method,
    /// A fresh response was stored but the request did not allow its use
    /// (`Cache-Control: no-cache`).
    Request,
}

impl Forward {
    fn token(self) -> &'static [u8] {
        match self {
            Forward::UriMiss => b"uri-miss",
            Forward::VaryMiss => b"vary-miss",
            Forward::Stale => b"stale",
            Forward::Bypass => b"bypass",
            Forward::Method => b"method",
            Forward::Request => b"request",
        }
    }
}

/// `Content-Range` (RFC 9110 §14.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete` of a 206.
    Bytes { first: u64, last: u64, complete: u64 },
    /// `bytes */complete` of a 416.
    Unsatisfied { complete: u64 },
}

/// The name shardgate's member of `Cache-Status` carries.
pub const CACHE_STATUS_NAME: &[u8] = b"shardgate";

impl CacheStatus {
    fn encode(&self, out: &mut Vec<u8>, key: Option<&[u8]>) {
        let mut numbers = itoa::Buffer::new();
        // The common case, a plain hit, in two appends (it is on every hit).
        if self.hit && !self.collapsed && key.is_none() {
            if let (None, Some(ttl)) = (self.fwd, self.ttl_s) {
                out.extend_from_slice(b"\r\nCache-Status: shardgate; hit; ttl=");
                out.extend_from_slice(numbers.format(ttl).as_bytes());
                return;
            }
        }
        out.extend_from_slice(b"\r\nCache-Status: ");
        out.extend_from_slice(CACHE_STATUS_NAME);
        if self.hit {
            out.extend_from_slice(b"; hit");
        }
        if let Some(fwd) = self.fwd {
            out.extend_from_slice(b"; fwd=");
            out.extend_from_slice(fwd.token());
        }
        if let Some(status) = self.fwd_status {
            out.extend_from_slice(b"; fwd-status=");
            out.extend_from_slice(numbers.format(status).as_bytes());
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            out.extend_from_slice(b"; collapsed");
        }
        if let Some(ttl) = self.ttl_s {
            out.extend_from_slice(b"; ttl=");
            out.extend_from_slice(numbers.format(ttl).as_bytes());
        }
        if let Some(key) = key {
            // An sf-string: printable ASCII, `"` and `\` escaped; other
            // bytes become `%XX` so the value stays a valid string.
            out.extend_from_slice(b"; key=\"");
            for &byte in key {
                match byte {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
                    0x20..=0x7e => out.push(byte),
                    _ => out.extend_from_slice(format!("%{byte:02X}").as_bytes()),
                }
            }
            out.push(b'"');
        }
    }
}

impl Proxied {
    /// A relayed response's fields, with nothing else set.
    pub fn new(reason: Bytes, headers: Bytes, age_s: Option<u64>, x_cache: Option<&'static str>) -> Proxied {
        Proxied { reason, headers, age_s, x_cache, ..Proxied::default() }
    }
}

impl Response {
    /// The body's length, wherever it is held; None for a stream of unknown length.
    pub fn body_length(&self) -> Option<u64> {
        match &self.extra {
            Extra::Proxied(proxied) => match &proxied.body {
                ProxiedBody::Inline => Some(self.body.len() as u64),
                ProxiedBody::Pieces(pieces) => Some(pieces.len()),
                ProxiedBody::Stream(stream) => stream.length,
            },
            _ => Some(self.body.len() as u64),
        }
    }
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, ..Response::default() }
    }

    /// A plain-text body, as the service endpoints answer.
    pub fn text(status: u16, body: &'static str) -> Response {
        Response {
            status,
            content_type: Some(Bytes::from_static(b"text/plain; charset=utf-8")),
            body: Bytes::from_static(body.as_bytes()),
            ..Response::default()
        }
    }

    /// An RFC 9457 problem details response with `type` `about:blank`.
    pub fn problem(status: u16, detail: &str) -> Response {
        Response::problem_typed(status, "about:blank", detail)
    }

    pub fn problem_typed(status: u16, problem_type: &str, detail: &str) -> Response {
        let mut body = Vec::with_capacity(96 + detail.len());
        body.extend_from_slice(b"{\"type\":");
        json_string(&mut body, problem_type);
        body.extend_from_slice(b",\"title\":");
        json_string(&mut body, reason(status));
        body.extend_from_slice(b",\"status\":");
        body.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        body.extend_from_slice(b",\"detail\":");
        json_string(&mut body, detail);
        body.push(b'}');
        Response {
            status,
            content_type: Some(Bytes::from_static(PROBLEM_CONTENT_TYPE)),
            body: Bytes::from(body),
            ..Response::default()
        }
    }

    /// The 503 every bounded queue answers when full.
    pub fn overloaded(detail: &str) -> Response {
        Response { retry_after_s: Some(1), ..Response::problem(503, detail) }
    }
}

/// The IETF RateLimit fields of one response (draft-ietf-httpapi-ratelimit-headers-09 syntax
/// as docs/spec.md §4 quotes it): one item per policy the request was subject to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub items: [Option<RateItem>; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateItem {
    /// The `"writes"` policy, else `"default"` (a flag, not a string: this
    /// travels with every response, so it is kept small).
    pub writes: bool,
    /// `q`: the limit.
    pub quota: u32,
    /// `w`: the window in seconds (at most a day).
    pub window_s: u32,
    /// `r`: requests left.
    pub remaining: u32,
    /// `t`: seconds until the count next drops.
    pub reset_s: u32,
}

impl RateHeaders {
    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_field(out, b"\r\nRateLimit-Policy: ", |item| [(b"q", item.quota), (b"w", item.window_s)]);
        self.encode_field(out, b"\r\nRateLimit: ", |item| [(b"r", item.remaining), (b"t", item.reset_s)]);
    }

    /// One structured field: `"name";k=v;k=v` per item, comma-separated.
    fn encode_field(&self, out: &mut Vec<u8>, field: &[u8], parameters: impl Fn(&RateItem) -> [(&[u8; 1], u32); 2]) {
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(field);
        for (i, item) in self.items.iter().flatten().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.push(b'"');
            out.extend_from_slice(if item.writes { b"writes" } else { b"default" });
            out.push(b'"');
            for (key, value) in parameters(item) {
                out.push(b';');
                out.extend_from_slice(key);
                out.push(b'=');
                out.extend_from_slice(numbers.format(value).as_bytes());
            }
        }
    }
}

/// What the `Connection` field must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive11,
    /// An HTTP/1.0 client asked to keep the connection: confirm it.
    KeepAlive10,
    Close,
}

/// How to frame one response on its connection.
#[derive(Clone, Copy, Debug)]
pub struct Framing<'a> {
    /// Omit the body of a HEAD response while keeping its `Content-Length`.
    pub head_only: bool,
    /// The client speaks HTTP/1.1: a body of unknown length is sent
    /// chunked; to an HTTP/1.0 client it runs to the close.
    pub chunked_ok: bool,
    pub persistence: Persistence,
    /// `RateLimit-Policy` and `RateLimit` fields (docs/spec.md §4). Kept out of
    /// [`Response`] so every response stays small to move.
    pub rate: Option<&'a RateHeaders>,
}

/// Bodies of at least this many bytes are not copied into the output: the
/// encoder hands them back and the caller writes them from the response's
/// own shared buffer, so one stored value served to many slow readers is
/// held once, not once per reader.
pub const SHARED_BODY_BYTES_MIN: usize = 16 * 1024;

/// What follows an encoded head in the output, when the body was not
/// copied into it.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the body (if any) was appended.
    None,
    /// One large shared buffer ([`SHARED_BODY_BYTES_MIN`]).
    Shared(Bytes),
    /// A stored body in shared pieces.
    Pieces(Pieces),
    /// A body still arriving: `chunked` frames it in chunks; else it is cut
    /// at its length, or runs to the close (then `close` is set).
    Stream { body: StreamBody, chunked: bool },
}

/// Appends `response` to `out`. Returns the body to write after `out` when
/// it is large ([`SHARED_BODY_BYTES_MIN`]), in pieces or a stream; smaller
/// bodies are appended. The second value is true when the body runs to the
/// close of the connection (a stream of unknown length to an HTTP/1.0
/// client): the head then says `Connection: close`.
///
/// Kept in one straight-line function on purpose: it runs once per
/// response on the hot path (pipelined GETs spend a large share of their
/// instructions here), and splitting it would move field values through
/// calls that the optimiser does not always inline.
#[must_use = "a large body is returned, not appended"]
pub fn encode(out: &mut Vec<u8>, response: &Response, date: &DateCache, framing: Framing<'_>) -> (Tail, bool) {
    let Framing { head_only, chunked_ok, mut persistence, rate } = framing;
    let status = response.status;
    let content_type = response.content_type.as_deref().unwrap_or_default();
    // Where the body is, and its length (None: a stream of unknown length).
    let (proxied_body, body_length) = match &response.extra {
        Extra::Proxied(proxied) => match &proxied.body {
            ProxiedBody::Inline => (None, Some(response.body.len() as u64)),
            ProxiedBody::Pieces(pieces) => (Some(&proxied.body), Some(pieces.len())),
            ProxiedBody::Stream(stream) => (Some(&proxied.body), stream.length),
        },
        _ => (None, Some(response.body.len() as u64)),
    };
    let shared = proxied_body.is_none() && response.body.len() >= SHARED_BODY_BYTES_MIN;
    let body_copied = if shared || proxied_body.is_some() { 0 } else { response.body.len() };
    let stream_chunked = body_length.is_none() && chunked_ok;
    let to_close = body_length.is_none() && !chunked_ok && !head_only;
    if to_close {
        persistence = Persistence::Close;
    }
    out.reserve(HEAD_FIXED_BYTES_MAX + content_type.len() + body_copied);
    match &response.extra {
        Extra::None | Extra::Allow(_) => out.extend_from_slice(status_line(status)),
        Extra::Proxied(proxied) => {
            // Any status an origin sends, with its own reason phrase.
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
            out.push(b' ');
            out.extend_from_slice(&proxied.reason);
            out.extend_from_slice(b"\r\nDate: ");
        }
    }
    match &response.extra {
        Extra::Proxied(proxied) => out.extend_from_slice(proxied.date.as_ref().unwrap_or(date.text())),
        _ => out.extend_from_slice(date.text()),
    }
    let mut numbers = itoa::Buffer::new();
    let bodyless = status < 200 || status == 204 || status == 304;
    match body_length {
        _ if bodyless => {}
        Some(length) => {
            out.extend_from_slice(b"\r\nContent-Length: ");
            out.extend_from_slice(numbers.format(length).as_bytes());
        }
        None if stream_chunked && !head_only => out.extend_from_slice(b"\r\nTransfer-Encoding: chunked"),
        None => {}
    }
    if response.content_type.is_some() {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type);
    }
    if let Some(etag) = response.etag {
        out.extend_from_slice(b"\r\nETag: ");
        out.extend_from_slice(&etag.encode());
    }
    if let Some((owner, count)) = response.shard {
        out.extend_from_slice(b"\r\nX-Shard: ");
        out.extend_from_slice(numbers.format(owner).as_bytes());
        out.push(b'/');
        out.extend_from_slice(numbers.format(count).as_bytes());
    }
    match &response.extra {
        Extra::None => {}
        Extra::Allow(allow) => {
            out.extend_from_slice(b"\r\nAllow: ");
            out.extend_from_slice(allow.as_bytes());
        }
        Extra::Proxied(proxied) => {
            out.extend_from_slice(&proxied.headers);
            if let Some(age_s) = proxied.age_s {
                out.extend_from_slice(b"\r\nAge: ");
                out.extend_from_slice(numbers.format(age_s).as_bytes());
            }
            if let Some(x_cache) = proxied.x_cache {
                out.extend_from_slice(b"\r\nX-Cache: ");
                out.extend_from_slice(x_cache.as_bytes());
            }
            if let Some(cache_status) = &proxied.cache_status {
                cache_status.encode(out, proxied.cache_key.as_deref());
            }
            match proxied.content_range {
                None => {}
                Some(ContentRange::Bytes { first, last, complete }) => {
                    out.extend_from_slice(b"\r\nContent-Range: bytes ");
                    out.extend_from_slice(numbers.format(first).as_bytes());
                    out.push(b'-');
                    out.extend_from_slice(numbers.format(last).as_bytes());
                    out.push(b'/');
                    out.extend_from_slice(numbers.format(complete).as_bytes());
                }
                Some(ContentRange::Unsatisfied { complete }) => {
                    out.extend_from_slice(b"\r\nContent-Range: bytes */");
                    out.extend_from_slice(numbers.format(complete).as_bytes());
                }
            }
        }
    }
    if let Some(rate) = rate.filter(|r| r.items.iter().any(Option::is_some)) {
        rate.encode(out);
    }
    if let Some(seconds) = response.retry_after_s {
        out.extend_from_slice(b"\r\nRetry-After: ");
        out.extend_from_slice(numbers.format(seconds).as_bytes());
    }
    match persistence {
        Persistence::KeepAlive11 => {}
        Persistence::KeepAlive10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persistence::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(b"\r\n\r\n");
    if bodyless || head_only {
        return (Tail::None, false);
    }
    match proxied_body {
        None if shared => (Tail::Shared(response.body.clone()), false),
        None | Some(ProxiedBody::Inline) => {
            out.extend_from_slice(&response.body);
            (Tail::None, false)
        }
        Some(ProxiedBody::Pieces(pieces)) => (Tail::Pieces(pieces.clone()), false),
        Some(ProxiedBody::Stream(body)) => (Tail::Stream { body: body.clone(), chunked: stream_chunked }, to_close),
    }
}

/// Upper bound of a head's bytes besides the content type: the longest
/// status line, the date, and every other field at its longest.
const HEAD_FIXED_BYTES_MAX: usize = 512;

/// Defines, from one table, the status line (with the `Date` field name
/// that always follows it) and the reason phrase of each status sent.
macro_rules! statuses {
    ($($code:literal $reason:literal,)*) => {
        /// `HTTP/1.1 <code> <reason>\r\nDate: `.
        fn status_line(status: u16) -> &'static [u8] {
            match status {
                $($code => concat!("HTTP/1.1 ", stringify!($code), " ", $reason, "\r\nDate: ").as_bytes(),)*
                _ => panic!("status {status} is not in the status table"),
            }
        }

        /// The reason phrase of a status shardgate sends.
        pub fn reason(status: u16) -> &'static str {
            match status {
                $($code => $reason,)*
                _ => "Unknown",
            }
        }
    };
}

statuses! {
    100 "Continue",
    200 "OK",
    201 "Created",
    202 "Accepted",
    204 "No Content",
    206 "Partial Content",
    304 "Not Modified",
    400 "Bad Request",
    401 "Unauthorized",
    403 "Forbidden",
    404 "Not Found",
    405 "Method Not Allowed",
    408 "Request Timeout",
    412 "Precondition Failed",
    413 "Content Too Large",
    414 "URI Too Long",
    416 "Range Not Satisfiable",
    417 "Expectation Failed",
    429 "Too Many Requests",
    431 "Request Header Fields Too Large",
    500 "Internal Server Error",
    502 "Bad Gateway",
    503 "Service Unavailable",
    504 "Gateway Timeout",
    507 "Insufficient Storage",
}

/// The `Date` field value, formatted once per second (RFC 9110 §6.6.1).
pub struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl DateCache {
    pub fn new(now: SystemTime) -> DateCache {
        let mut cache = DateCache { second: u64::MAX, text: [b' '; 29] };
        cache.refresh(now);
        cache
    }

    /// Reformats only when the second has changed.
    pub fn refresh(&mut self, now: SystemTime) {
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            assert_eq!(text.len(), 29, "IMF-fixdate is 29 bytes");
            self.text.copy_from_slice(text.as_bytes());
            self.second = second;
        }
    }

    pub fn text(&self) -> &[u8; 29] {
        &self.text
    }
}

/// Appends `value` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests;
