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

use bytes::Bytes;

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
            _ => Method::Other,
        }
    }
}

/// A decoded request. Only the header fields shardgate acts on are kept, each
/// copied out of the input so the input buffer can be reused at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request-target as sent (origin-form `/path?query`, or absolute-form).
    pub target: Bytes,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    pub content_type: Option<Bytes>,
    pub if_match: Option<Bytes>,
    pub if_none_match: Option<Bytes>,
    pub x_durability: Option<Bytes>,
    pub body: Bytes,
}

// `Complete` is the common case and is moved once; boxing the request
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// More input is needed; call again with the same bytes and more.
    Partial,
    Complete {
        request: Request,
        consumed: usize,
    },
}

#[derive(Debug)]
enum BodyFraming {
    Length(usize),
    Chunked(Chunked),
}

#[derive(Debug)]
struct Chunked {
    /// Offset of the next unparsed byte.
    position: usize,
    phase: ChunkPhase,
    body: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    SizeLine,
    Data { remaining: usize },
    DataEnd,
    Trailers,
}

// One per connection, never moved on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum State {
    /// Looking for the end of the head; `scanned` bytes hold no terminator.
    Head { scanned: usize },
    Body {
        request: Request,
        body_start: usize,
        framing: BodyFraming,
        expect_continue: bool,
    },
}

/// A resumable decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    continue_due: bool,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Head { scanned: 0 },
            continue_due: false,
        }
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

    /// Decodes the request at the start of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        let result = self.decode_inner(input);
        if !matches!(result, Ok(Decoded::Partial)) {
            self.state = State::Head { scanned: 0 };
            self.continue_due = false;
        }
        result
    }

    fn decode_inner(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        if let State::Head { scanned } = &mut self.state {
            let Some(head_end) = find_head_end(input, scanned, self.limits.head_bytes_max)? else {
                return Ok(Decoded::Partial);
            };
            let head = parse_head(&input[..head_end], self.limits)?;
            let Some(framing) = head.framing else {
                return Ok(Decoded::Complete {
                    request: head.request,
                    consumed: head_end,
                });
            };
            self.continue_due = head.expect_continue && input.len() == head_end;
            let framing = match framing {
                Framing::Length(n) => BodyFraming::Length(n),
                Framing::Chunked => BodyFraming::Chunked(Chunked {
                    position: head_end,
                    phase: ChunkPhase::SizeLine,
                    body: Vec::new(),
                    trailer_bytes: 0,
                }),
            };
            self.state = State::Body {
                request: head.request,
                body_start: head_end,
                framing,
                expect_continue: head.expect_continue,
            };
        }
        let State::Body {
            request,
            body_start,
            framing,
            expect_continue,
        } = &mut self.state
        else {
            unreachable!("head state handled above");
        };
        if *expect_continue && input.len() > *body_start {
            // The client sent body bytes without waiting: no interim response.
            self.continue_due = false;
        }
        let consumed = match framing {
            BodyFraming::Length(length) => {
                let end = *body_start + *length;
                if input.len() < end {
                    return Ok(Decoded::Partial);
                }
                request.body = Bytes::copy_from_slice(&input[*body_start..end]);
                end
            }
            BodyFraming::Chunked(chunked) => match chunked.advance(input, self.limits)? {
                None => return Ok(Decoded::Partial),
                Some(end) => {
                    request.body = Bytes::from(std::mem::take(&mut chunked.body));
                    end
                }
            },
        };
        let State::Body { request, .. } =
            std::mem::replace(&mut self.state, State::Head { scanned: 0 })
        else {
            unreachable!();
        };
        Ok(Decoded::Complete { request, consumed })
    }
}

/// Finds the end of the head (the byte after its empty line), resuming the
/// scan at `*scanned`. Errors when the head passes `head_bytes_max`.
fn find_head_end(
    input: &[u8],
    scanned: &mut usize,
    head_bytes_max: usize,
) -> Result<Option<usize>, HttpError> {
    let limit = input.len().min(head_bytes_max);
    // Resume two bytes back so a terminator split across reads is still seen.
    let mut i = scanned.saturating_sub(2);
    while i < limit {
        if input[i] == b'\n' {
            match input.get(i + 1) {
                Some(b'\n') if i + 2 <= head_bytes_max => return Ok(Some(i + 2)),
                Some(b'\r') if input.get(i + 2) == Some(&b'\n') && i + 3 <= head_bytes_max => {
                    return Ok(Some(i + 3));
                }
                _ => {}
            }
        }
        i += 1;
    }
    *scanned = limit;
    if input.len() >= head_bytes_max {
        let leading = input
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let has_line_end = input[leading..head_bytes_max.max(leading)].contains(&b'\n');
        return Err(if has_line_end {
            HttpError::HeaderTooLarge
        } else {
            HttpError::UriTooLong
        });
    }
    Ok(None)
}

enum Framing {
    Length(usize),
    Chunked,
}

struct Head {
    request: Request,
    framing: Option<Framing>,
    expect_continue: bool,
}

fn parse_head(bytes: &[u8], limits: Limits) -> Result<Head, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        // The terminator was found, so a partial parse means a malformed head.
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::BadRequest("malformed request head"))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeaderTooLarge),
        Err(httparse::Error::Version) => {
            return Err(HttpError::BadRequest("unsupported HTTP version"))
        }
        Err(_) => {
            return Err(HttpError::BadRequest(
                "malformed request line or header field",
            ))
        }
    }
    let version_minor = parsed.version.expect("complete parse has a version");
    let method = Method::parse(parsed.method.expect("complete parse has a method"));
    let target = Bytes::copy_from_slice(parsed.path.expect("complete parse has a path").as_bytes());
    let mut fields_seen = Fields::default();
    for field in parsed.headers.iter() {
        fields_seen.add(field.name, field.value)?;
    }
    let Fields {
        content_length,
        chunked,
        hosts,
        close,
        keep_alive,
        ref expect,
        ..
    } = fields_seen;
    if chunked && content_length.is_some() {
        return Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && version_minor == 0 {
        return Err(HttpError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if version_minor == 1 && hosts != 1 {
        return Err(HttpError::BadRequest(
            "HTTP/1.1 requires exactly one Host field",
        ));
    }
    let expect_continue = match expect {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") => version_minor == 1,
        Some(_) => return Err(HttpError::ExpectationFailed),
    };
    let framing = match content_length {
        _ if chunked => Some(Framing::Chunked),
        Some(n) if n > limits.body_bytes_max as u64 => return Err(HttpError::BodyTooLarge),
        Some(0) | None => None,
        Some(n) => Some(Framing::Length(n as usize)),
    };
    let keep_alive = if version_minor == 1 {
        !close
    } else {
        keep_alive && !close
    };
    let request = Request {
        method,
        target,
        version_minor,
        keep_alive,
        content_type: fields_seen.content_type,
        if_match: fields_seen.if_match,
        if_none_match: fields_seen.if_none_match,
        x_durability: fields_seen.x_durability,
        body: Bytes::new(),
    };
    let expect_continue = expect_continue && framing.is_some();
    Ok(Head {
        request,
        framing,
        expect_continue,
    })
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
    expect: Option<Vec<u8>>,
    content_type: Option<Bytes>,
    if_match: Option<Bytes>,
    if_none_match: Option<Bytes>,
    x_durability: Option<Bytes>,
}

impl Fields {
    fn add(&mut self, name: &str, value: &[u8]) -> Result<(), HttpError> {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            for member in value.split(|&b| b == b',') {
                let length = parse_content_length(trim(member))?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(HttpError::BadRequest("conflicting Content-Length values"));
                }
                self.content_length = Some(length);
            }
        } else if is("transfer-encoding") {
            // Only `chunked`, once, is accepted: any other coding, or chunked
            // applied twice, is refused (SPEC §5: unknown coding → 400).
            for coding in value.split(|&b| b == b',').map(trim) {
                if !coding.eq_ignore_ascii_case(b"chunked") || self.chunked {
                    return Err(HttpError::BadRequest("unsupported transfer coding"));
                }
                self.chunked = true;
            }
        } else if is("host") {
            self.hosts += 1;
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(trim) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("expect") {
            if self.expect.is_some() {
                return Err(HttpError::ExpectationFailed);
            }
            self.expect = Some(trim(value).to_vec());
        } else if is("content-type") {
            if self.content_type.is_some() {
                return Err(HttpError::BadRequest("more than one Content-Type"));
            }
            self.content_type = Some(Bytes::copy_from_slice(trim(value)));
        } else if is("if-match") {
            append_list(&mut self.if_match, value);
        } else if is("if-none-match") {
            append_list(&mut self.if_none_match, value);
        } else if is("x-durability") {
            self.x_durability = Some(Bytes::copy_from_slice(trim(value)));
        }
        Ok(())
    }
}

/// Joins repeated list-valued field lines with ", " (RFC 9110 §5.3).
fn append_list(target: &mut Option<Bytes>, value: &[u8]) {
    *target = Some(match target.take() {
        None => Bytes::copy_from_slice(value),
        Some(seen) => Bytes::from([&seen[..], b", ", value].concat()),
    });
}

fn parse_content_length(digits: &[u8]) -> Result<u64, HttpError> {
    // 18 digits cannot overflow a u64; no real body is longer.
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("invalid Content-Length"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

impl Chunked {
    /// Parses as far as `input` allows. Returns the end offset of the whole
    /// message once the last chunk and the trailer section are in.
    fn advance(&mut self, input: &[u8], limits: Limits) -> Result<Option<usize>, HttpError> {
        loop {
            let rest = &input[self.position..];
            match self.phase {
                ChunkPhase::SizeLine => {
                    let Some(line_end) = find_crlf(rest, CHUNK_LINE_BYTES_MAX)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&rest[..line_end])?;
                    if self.body.len() as u64 + size > limits.body_bytes_max as u64 {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.position += line_end + 2;
                    self.phase = if size == 0 {
                        ChunkPhase::Trailers
                    } else {
                        ChunkPhase::Data {
                            remaining: size as usize,
                        }
                    };
                }
                ChunkPhase::Data { remaining } => {
                    let take = remaining.min(rest.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(&rest[..take]);
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
                    let Some(line_end) =
                        find_crlf(rest, budget).map_err(|_| HttpError::HeaderTooLarge)?
                    else {
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
                    let name_ok =
                        colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&b| is_token(b)));
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
fn find_crlf(bytes: &[u8], bytes_max: usize) -> Result<Option<usize>, HttpError> {
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
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::BadRequest("invalid chunk size"));
    }
    // 15 hex digits stay below 2^60: no overflow, and far above any limit.
    if line[..digits].iter().skip_while(|&&b| b == b'0').count() > 15 {
        return Err(HttpError::BadRequest("chunk size overflows"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        (n << 4) | u64::from((d as char).to_digit(16).unwrap())
    });
    let extensions = trim(&line[digits..]);
    if !extensions.is_empty() {
        let legal = extensions[0] == b';'
            && extensions
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !legal {
            return Err(HttpError::BadRequest("invalid chunk extension"));
        }
    }
    Ok(size)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
