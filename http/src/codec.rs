//! HTTP/1.1 request decoder (RFC 9112), on httparse.
//!
//! [`Decoder::decode`] is fed the connection's unconsumed input, always from
//! the first byte of the request being decoded, and answers
//! [`Decoded::Partial`] (feed it the same bytes plus more) or
//! [`Decoded::Complete`] with the request and how many bytes it used. The
//! decoder keeps its place between calls, so a request delivered a byte at a
//! time is still scanned once: no input can make it quadratic.
//!
//! Any [`HttpError`] means the connection must answer that error and close:
//! once framing is in doubt nothing after it can be trusted (RFC 9112 §6.3,
//! request smuggling).

use std::mem::MaybeUninit;

/// Most header fields in one request head; more → 431.
pub const HEADERS_MAX: usize = 64;
/// Longest chunk-size line, extensions included; longer → 400.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// The size limits a decoder enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub head_bytes_max: usize,
    pub body_bytes_max: usize,
}

/// Why a request was refused. Each maps to one status; all close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request line longer than the header limit")]
    UriTooLong,
    #[error("request header section larger than the limit")]
    HeaderTooLarge,
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("only `Expect: 100-continue` is supported")]
    ExpectationFailed,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::UriTooLong => 414,
            HttpError::HeaderTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::ExpectationFailed => 417,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Delete,
    Post,
    Patch,
    Options,
    /// Varnish's and nginx's cache purge method (gateway mode).
    Purge,
    /// Any other token httparse accepted.
    Other,
}

impl Method {
    fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            "PURGE" => Method::Purge,
            _ => Method::Other,
        }
    }
}

/// A decoded request, borrowing from the input (and, for chunked bodies and
/// repeated list fields, from the decoder) until the next `decode` call.
/// Only the header fields shardgate acts on are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The request-target as sent (origin-form `/path?query`, or absolute-form).
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    pub content_type: Option<&'a [u8]>,
    pub if_match: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
    pub x_durability: Option<&'a [u8]>,
    /// The client identity for rate limiting, when the client names one.
    pub x_api_key: Option<&'a [u8]>,
    /// The last hop of the last `X-Forwarded-For` line: the address the
    /// nearest proxy saw (used only with `--trust-forwarded-for`).
    pub forwarded_for: Option<&'a [u8]>,
    /// The whole request head as received, request line to the blank line:
    /// the gateway forwards its other fields.
    pub head: &'a [u8],
    pub body: &'a [u8],
    /// The body follows the head and is left to the caller to stream (see
    /// [`Decoder::stream_bodies_from`]); `body` is then empty.
    pub streamed: Option<BodyToStream>,
}

/// How a body the caller streams is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyToStream {
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// More input is needed; call again with the same bytes and more.
    Partial,
    Complete {
        request: Request<'a>,
        consumed: usize,
    },
}

/// A byte range of the request's input. Offsets rather than slices let a
/// parsed head survive between `decode` calls while the input grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, which must be a subslice of `base`.
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        assert!(start <= base.len() && start + part.len() <= base.len(), "span outside its base");
        Span { start: start as u32, end: (start + part.len()) as u32 }
    }

    fn get(self, base: &[u8]) -> &[u8] {
        &base[self.start as usize..self.end as usize]
    }
}

/// A list-valued field (`If-Match`, `If-None-Match`): one line is a span;
/// repeated lines are joined with ", " into an owned copy (RFC 9110 §5.3).
#[derive(Debug, Default)]
enum ListField {
    #[default]
    Absent,
    One(Span),
    Joined(Vec<u8>),
}

impl ListField {
    fn add(&mut self, base: &[u8], value: &[u8]) {
        *self = match std::mem::take(self) {
            ListField::Absent => ListField::One(Span::of(base, value)),
            ListField::One(first) => ListField::Joined([first.get(base), b", ", value].concat()),
            ListField::Joined(mut joined) => {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value);
                ListField::Joined(joined)
            }
        };
    }

    fn get<'a>(&'a self, base: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            ListField::Absent => None,
            ListField::One(span) => Some(span.get(base)),
            ListField::Joined(joined) => Some(joined),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head, as spans of the request's input.
#[derive(Debug)]
struct Head {
    method: Method,
    version_minor: u8,
    keep_alive: bool,
    target: Span,
    content_type: Option<Span>,
    if_match: ListField,
    if_none_match: ListField,
    x_durability: Option<Span>,
    x_api_key: Option<Span>,
    forwarded_for: Option<Span>,
    /// Offset of the first body byte.
    end: usize,
    framing: Option<Framing>,
    expect_continue: bool,
}

/// A chunked message body being decoded (the gateway's origin client
/// uses it for responses).
#[derive(Debug)]
pub struct Chunked {
    /// Offset of the next unparsed byte.
    position: usize,
    phase: ChunkPhase,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    SizeLine,
    Data { remaining: usize },
    DataEnd,
    Trailers,
}

#[derive(Debug)]
enum State {
    /// Looking for the end of the head; `scanned` bytes were seen already.
    Head { scanned: usize },
    /// The head is in `Decoder::head`; waiting for the body.
    Body { chunked: Option<Chunked> },
    /// The last call completed a request or failed; the next call starts anew.
    Done,
}

/// Chunked-body capacity kept between requests; a larger buffer is freed.
const CHUNKED_BODY_BYTES_KEPT_MAX: usize = 64 * 1024;

/// A resumable decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    head: Option<Head>,
    /// The de-chunked body of the current request.
    chunked_body: Vec<u8>,
    continue_due: bool,
    /// Bodies of at least this many bytes, or chunked, are left to stream.
    stream_from_bytes: Option<usize>,
    /// The current request's body is left to stream.
    streamed: Option<BodyToStream>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Head { scanned: 0 },
            head: None,
            chunked_body: Vec::new(),
            continue_due: false,
            stream_from_bytes: None,
            streamed: None,
        }
    }

    /// From now on a request whose body is chunked, or at least `bytes`
    /// long, completes with its head alone: `Request::streamed` says how its
    /// body is framed, and the caller reads it (the gateway streams it to
    /// the origin instead of buffering it).
    pub fn stream_bodies_from(&mut self, bytes: usize) {
        self.stream_from_bytes = Some(bytes);
    }

    /// True while a request's head has been decoded and its body not.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// True once, when a `100 Continue` interim response is due: the head
    /// asked for it and no body byte has arrived yet.
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }

    /// Decodes the request at the start of `input`. After `Complete` or an
    /// error, the next call decodes a new request.
    pub fn decode<'a>(&'a mut self, input: &'a [u8]) -> Result<Decoded<'a>, HttpError> {
        if matches!(self.state, State::Done) {
            self.state = State::Head { scanned: 0 };
            self.head = None;
            self.streamed = None;
            self.chunked_body.clear();
            if self.chunked_body.capacity() > CHUNKED_BODY_BYTES_KEPT_MAX {
                self.chunked_body = Vec::new();
            }
        }
        let result = self.advance(input);
        if !matches!(result, Ok(None)) {
            self.state = State::Done;
            self.continue_due = false;
        }
        match result? {
            None => Ok(Decoded::Partial),
            Some(consumed) => {
                let head = self.head.as_ref().expect("a complete request has a head");
                let body = match head.framing {
                    _ if self.streamed.is_some() => &[][..],
                    None => &[][..],
                    Some(Framing::Length(length)) => &input[head.end..head.end + length],
                    Some(Framing::Chunked) => &self.chunked_body[..],
                };
                let mut request = head.request(input, body);
                request.streamed = self.streamed;
                Ok(Decoded::Complete { request, consumed })
            }
        }
    }

    /// Parses as far as `input` allows; returns the request's end offset once complete.
    fn advance(&mut self, input: &[u8]) -> Result<Option<usize>, HttpError> {
        if let State::Head { scanned } = &mut self.state {
            let Some(head) = find_head(input, scanned, self.limits)? else {
                return Ok(None);
            };
            let end = head.end;
            self.continue_due = head.expect_continue && input.len() == end;
            let streamed = match (self.stream_from_bytes, head.framing) {
                (Some(_), Some(Framing::Chunked)) => Some(BodyToStream::Chunked),
                (Some(min), Some(Framing::Length(length))) if length >= min => {
                    Some(BodyToStream::Length(length as u64))
                }
                _ => None,
            };
            if streamed.is_some() {
                self.streamed = streamed;
                self.head = Some(head);
                return Ok(Some(end));
            }
            self.state = match head.framing {
                None => {
                    self.head = Some(head);
                    return Ok(Some(end));
                }
                Some(Framing::Length(_)) => State::Body { chunked: None },
                Some(Framing::Chunked) => State::Body { chunked: Some(Chunked::new(end)) },
            };
            self.head = Some(head);
        }
        let State::Body { chunked } = &mut self.state else {
            unreachable!("head and done states handled above");
        };
        let head = self.head.as_ref().expect("body state has a head");
        if head.expect_continue && input.len() > head.end {
            // The client sent body bytes without waiting: no interim response.
            self.continue_due = false;
        }
        match (chunked, head.framing) {
            (None, Some(Framing::Length(length))) => {
                let end = head.end + length;
                Ok((input.len() >= end).then_some(end))
            }
            (Some(chunked), _) => chunked.advance(input, &mut self.chunked_body, self.limits),
            _ => unreachable!("body state matches its framing"),
        }
    }
}

impl Head {
    fn request<'a>(&'a self, input: &'a [u8], body: &'a [u8]) -> Request<'a> {
        Request {
            method: self.method,
            target: self.target.get(input),
            version_minor: self.version_minor,
            keep_alive: self.keep_alive,
            content_type: self.content_type.map(|s| s.get(input)),
            if_match: self.if_match.get(input),
            if_none_match: self.if_none_match.get(input),
            x_durability: self.x_durability.map(|s| s.get(input)),
            x_api_key: self.x_api_key.map(|s| s.get(input)),
            forwarded_for: self.forwarded_for.map(|s| s.get(input)),
            head: &input[..self.end],
            body,
            streamed: None,
        }
    }
}

/// Finds and parses the head. httparse is given the input up to its last
/// line end: what it says about complete lines does not depend on how the
/// bytes were split into reads, and a head trickling in is parsed at most
/// once per new line (bounded by `HEADERS_MAX`), never once per byte.
/// `*scanned` is how much input the previous call had seen.
fn find_head(input: &[u8], scanned: &mut usize, limits: Limits) -> Result<Option<Head>, HttpError> {
    let head_bytes_max = limits.head_bytes_max;
    let limit = input.len().min(head_bytes_max);
    let from = (*scanned).min(limit);
    let line_end = memchr::memrchr(b'\n', &input[from..limit]).map(|i| from + i + 1);
    *scanned = limit;
    if let Some(end) = line_end {
        if let Some(head) = parse_head(&input[..end], limits)? {
            return Ok(Some(head));
        }
    }
    if input.len() >= head_bytes_max {
        let leading = input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        let has_line_end = input[leading..head_bytes_max.max(leading)].contains(&b'\n');
        return Err(if has_line_end { HttpError::HeaderTooLarge } else { HttpError::UriTooLong });
    }
    Ok(None)
}

/// Parses the head at the start of `bytes`. Returns `None` when httparse
/// needs more input.
fn parse_head(bytes: &[u8], limits: Limits) -> Result<Option<Head>, HttpError> {
    // Uninitialized: zeroing 64 headers (2 KiB) cost half of decoding.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut []);
    let end = match parsed.parse_with_uninit_headers(bytes, &mut fields) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeaderTooLarge),
        Err(httparse::Error::Version) => return Err(HttpError::BadRequest("unsupported HTTP version")),
        Err(_) => return Err(HttpError::BadRequest("malformed request line or header field")),
    };
    let version_minor = parsed.version.expect("complete parse has a version");
    let method = Method::parse(parsed.method.expect("complete parse has a method"));
    let target = Span::of(bytes, parsed.path.expect("complete parse has a path").as_bytes());
    let mut fields = Fields::default();
    for field in parsed.headers.iter() {
        fields.add(bytes, field.name, field.value)?;
    }
    if fields.chunked && fields.content_length.is_some() {
        return Err(HttpError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if fields.chunked && version_minor == 0 {
        return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if version_minor == 1 && fields.hosts != 1 {
        return Err(HttpError::BadRequest("HTTP/1.1 requires exactly one Host field"));
    }
    if fields.hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host field"));
    }
    let expect_continue = match fields.expect {
        None => false,
        Some(v) if v.get(bytes).eq_ignore_ascii_case(b"100-continue") => version_minor == 1,
        Some(_) => return Err(HttpError::ExpectationFailed),
    };
    let framing = match fields.content_length {
        _ if fields.chunked => Some(Framing::Chunked),
        Some(n) if n > limits.body_bytes_max as u64 => return Err(HttpError::BodyTooLarge),
        Some(0) | None => None,
        Some(n) => Some(Framing::Length(n as usize)),
    };
    let keep_alive = if version_minor == 1 { !fields.close } else { fields.keep_alive && !fields.close };
    Ok(Some(Head {
        method,
        version_minor,
        keep_alive,
        target,
        content_type: fields.content_type,
        if_match: fields.if_match,
        if_none_match: fields.if_none_match,
        x_durability: fields.x_durability,
        x_api_key: fields.x_api_key,
        forwarded_for: fields.forwarded_for,
        end,
        expect_continue: expect_continue && framing.is_some(),
        framing,
    }))
}

/// The header fields the decoder acts on, gathered over all field lines.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    /// `Transfer-Encoding: chunked` was sent (the only coding accepted).
    chunked: bool,
    hosts: u32,
    close: bool,
    keep_alive: bool,
    expect: Option<Span>,
    content_type: Option<Span>,
    if_match: ListField,
    if_none_match: ListField,
    x_durability: Option<Span>,
    x_api_key: Option<Span>,
    forwarded_for: Option<Span>,
}

impl Fields {
    /// Records one field line. Names are matched by length first: most
    /// lines are then rejected by one integer compare.
    fn add(&mut self, base: &[u8], name: &str, value: &[u8]) -> Result<(), HttpError> {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is("host") => {
                if !crate::fields::is_valid_host(trim(value)) {
                    return Err(HttpError::BadRequest("Host is not a valid authority"));
                }
                self.hosts += 1;
            }
            6 if is("expect") => {
                if self.expect.is_some() {
                    return Err(HttpError::ExpectationFailed);
                }
                self.expect = Some(Span::of(base, trim(value)));
            }
            8 if is("if-match") => self.if_match.add(base, value),
            9 if is("x-api-key") => {
                if self.x_api_key.is_some() {
                    return Err(HttpError::BadRequest("more than one X-API-Key"));
                }
                self.x_api_key = Some(Span::of(base, trim(value)));
            }
            10 if is("connection") => {
                for option in value.split(|&b| b == b',').map(trim) {
                    self.close |= option.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                    // Dropping Host at a hop would make the request name
                    // another resource than the one it was decided on.
                    if option.eq_ignore_ascii_case(b"host") {
                        return Err(HttpError::BadRequest("Connection may not nominate Host"));
                    }
                }
            }
            12 if is("content-type") => {
                if self.content_type.is_some() {
                    return Err(HttpError::BadRequest("more than one Content-Type"));
                }
                self.content_type = Some(Span::of(base, trim(value)));
            }
            12 if is("x-durability") => self.x_durability = Some(Span::of(base, trim(value))),
            13 if is("if-none-match") => self.if_none_match.add(base, value),
            14 if is("content-length") => {
                for member in value.split(|&b| b == b',') {
                    let length = parse_content_length(trim(member))?;
                    if self.content_length.is_some_and(|seen| seen != length) {
                        return Err(HttpError::BadRequest("conflicting Content-Length values"));
                    }
                    self.content_length = Some(length);
                }
            }
            15 if is("x-forwarded-for") => {
                let last = value.rsplit(|&b| b == b',').next().map_or(value, trim);
                self.forwarded_for = Some(Span::of(base, trim(last)));
            }
            17 if is("transfer-encoding") => {
                // Only `chunked`, once, is accepted: any other coding, or
                // chunked applied twice, is refused (docs/spec.md §5: unknown → 400).
                for coding in value.split(|&b| b == b',').map(trim) {
                    if !coding.eq_ignore_ascii_case(b"chunked") || self.chunked {
                        return Err(HttpError::BadRequest("unsupported transfer coding"));
                    }
                    self.chunked = true;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn parse_content_length(digits: &[u8]) -> Result<u64, HttpError> {
    // 18 digits cannot overflow a u64; no real body is longer.
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("invalid Content-Length"));
    }
    Ok(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |i| i + 1);
    &bytes[start..end]
}

impl Chunked {
    /// A decoder for a chunked body starting at offset `start` of its input.
    pub fn new(start: usize) -> Chunked {
        Chunked { position: start, phase: ChunkPhase::SizeLine, trailer_bytes: 0 }
    }

    /// Parses as far as `input` allows. Returns the end offset of the whole
    /// message once the last chunk and the trailer section are in.
    pub fn advance(&mut self, input: &[u8], body: &mut Vec<u8>, limits: Limits) -> Result<Option<usize>, HttpError> {
        loop {
            let rest = &input[self.position..];
            match self.phase {
                ChunkPhase::SizeLine => {
                    let Some(line_end) = find_crlf(rest, CHUNK_LINE_BYTES_MAX)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&rest[..line_end])?;
                    if body.len() as u64 + size > limits.body_bytes_max as u64 {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.position += line_end + 2;
                    self.phase =
                        if size == 0 { ChunkPhase::Trailers } else { ChunkPhase::Data { remaining: size as usize } };
                }
                ChunkPhase::Data { remaining } => {
                    let take = remaining.min(rest.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    body.extend_from_slice(&rest[..take]);
                    self.position += take;
                    self.phase = match remaining - take {
                        0 => ChunkPhase::DataEnd,
                        left => ChunkPhase::Data { remaining: left },
                    };
                }
                ChunkPhase::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
                    }
                    self.position += 2;
                    self.phase = ChunkPhase::SizeLine;
                }
                ChunkPhase::Trailers => {
                    let budget = limits.head_bytes_max.saturating_sub(self.trailer_bytes);
                    let Some(line_end) = find_crlf(rest, budget).map_err(|_| HttpError::HeaderTooLarge)? else {
                        return Ok(None);
                    };
                    self.position += line_end + 2;
                    self.trailer_bytes += line_end + 2;
                    if line_end == 0 {
                        return Ok(Some(self.position));
                    }
                    // Trailer fields are discarded, but must be well formed.
                    let line = &rest[..line_end];
                    let colon = line.iter().position(|&b| b == b':');
                    let name_ok = colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&b| is_token(b)));
                    if !name_ok {
                        return Err(HttpError::BadRequest("malformed trailer field"));
                    }
                }
            }
        }
    }
}

/// Finds a CRLF within the first `bytes_max` bytes. A bare LF or CR is an
/// error: lenient line endings in chunk framing are a smuggling vector.
pub(crate) fn find_crlf(bytes: &[u8], bytes_max: usize) -> Result<Option<usize>, HttpError> {
    for (i, &b) in bytes.iter().enumerate().take(bytes_max) {
        match b {
            b'\r' => match bytes.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => return Err(HttpError::BadRequest("bare CR in chunked framing")),
                None => return Ok(None),
            },
            b'\n' => return Err(HttpError::BadRequest("bare LF in chunked framing")),
            _ => {}
        }
    }
    if bytes.len() >= bytes_max {
        return Err(HttpError::BadRequest("chunk line too long"));
    }
    Ok(None)
}

/// Parses `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`;
/// extensions are checked for legal bytes and ignored.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::BadRequest("invalid chunk size"));
    }
    // 15 hex digits stay below 2^60: no overflow, and far above any limit.
    if line[..digits].iter().skip_while(|&&b| b == b'0').count() > 15 {
        return Err(HttpError::BadRequest("chunk size overflows"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).unwrap()));
    if !valid_chunk_extensions(&line[digits..]) {
        return Err(HttpError::BadRequest("invalid chunk extension"));
    }
    Ok(size)
}

/// RFC 9112 §7.1.1: `*( BWS ";" BWS token [ BWS "=" BWS ( token /
/// quoted-string ) ] )`, then optional whitespace. Anything else (an empty
/// name, an unterminated quote, a control byte) is refused: a lenient
/// reading here is how two parsers come to disagree on where a chunk ends.
fn valid_chunk_extensions(mut rest: &[u8]) -> bool {
    loop {
        rest = trim_start(rest);
        if rest.is_empty() {
            return true;
        }
        let Some(after) = rest.strip_prefix(b";") else {
            return false;
        };
        rest = trim_start(after);
        let name = rest.iter().take_while(|&&b| is_token(b)).count();
        if name == 0 {
            return false;
        }
        rest = trim_start(&rest[name..]);
        let Some(after) = rest.strip_prefix(b"=") else {
            continue;
        };
        rest = trim_start(after);
        match rest.first() {
            Some(b'"') => match quoted_string_end(rest) {
                Some(end) => rest = &rest[end..],
                None => return false,
            },
            _ => {
                let value = rest.iter().take_while(|&&b| is_token(b)).count();
                if value == 0 {
                    return false;
                }
                rest = &rest[value..];
            }
        }
    }
}

/// The length of the quoted-string at the start of `bytes` (quotes
/// included), or None when it is not one (RFC 9110 §5.6.4).
fn quoted_string_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some(i + 1),
            b'\\' if bytes.get(i + 1).is_some_and(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) => i += 2,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(bytes.len());
    &bytes[start..]
}

pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
