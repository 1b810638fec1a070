//! Decoding an origin's response (RFC 9112 §4–§6), sans-IO.
//!
//! [`parse_head`] is fed the bytes read so far and answers `None` until the
//! whole head is there; [`Head::body_end`] then says where the message ends
//! once its body has arrived. Interim (1xx) responses are skipped; the
//! response comes back with its hop-by-hop and framing fields removed, and
//! with the fields cache decisions read ([`CacheFields`]) picked out.

use bytes::Bytes;

use crate::codec::{find_crlf, parse_chunk_size, Chunked, HttpError, Limits, CHUNK_LINE_BYTES_MAX};
use crate::fields::{connection_options, is_hop_by_hop, named_by_connection};

/// Largest origin response body; larger is an error (the gateway buffers bodies).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Largest origin response head.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Header fields in one origin response; more is an error.
const RESPONSE_HEADERS_MAX: usize = 96;
/// Raw bytes of a chunked body (sizes, extensions, trailers included): the
/// body limit and an eighth more, so that chunk overhead cannot make a
/// response cost several times its body in memory.
pub const RESPONSE_RAW_BYTES_MAX: usize = RESPONSE_BYTES_MAX + RESPONSE_BYTES_MAX / 8;

/// Why an origin response cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the origin sent a malformed response: {0}")]
    Malformed(&'static str),
    #[error("the origin response is larger than the gateway buffers")]
    TooLarge,
}

/// A complete origin response.
#[derive(Clone, Debug, Default)]
pub struct OriginResponse {
    pub status: u16,
    pub reason: Bytes,
    /// End-to-end fields, each as `\r\nName: value`; hop-by-hop, framing,
    /// `Date` and `Age` removed (the gateway sends its own).
    pub headers: Bytes,
    pub body: Bytes,
    pub fields: CacheFields,
}

/// The response fields cache decisions read. List fields keep every line,
/// joined (`, `; surrogate keys by a space).
#[derive(Clone, Debug, Default)]
pub struct CacheFields {
    pub cache_control: Option<Bytes>,
    /// RFC 9213 targeted fields.
    pub cdn_cache_control: Option<Bytes>,
    pub shardgate_cache_control: Option<Bytes>,
    pub expires: Option<Bytes>,
    pub date: Option<Bytes>,
    pub age: Option<Bytes>,
    pub vary: Option<Bytes>,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
    pub content_encoding: Option<Bytes>,
    /// `Surrogate-Key` (Fastly) and `Cache-Tag` (Cloudflare).
    pub surrogate_key: Option<Bytes>,
    pub cache_tag: Option<Bytes>,
    /// Targets an unsafe method's answer may invalidate (RFC 9111 §4.4).
    pub location: Option<Bytes>,
    pub content_location: Option<Bytes>,
    /// `Content-Length` as sent (a HEAD's answer says what a GET's body is).
    pub content_length: Option<u64>,
    /// A `Set-Cookie` line was present.
    pub set_cookie: bool,
}

/// How the body of a response is delimited.
#[derive(Debug)]
pub enum BodyFraming {
    None,
    Length(usize),
    Chunked(Chunked),
    UntilClose,
}

/// A parsed response head, waiting for its body.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head.
    pub length: usize,
    pub keep_alive: bool,
    pub framing: BodyFraming,
    response: OriginResponse,
}

impl Head {
    /// The end offset of the message once its body is complete; None:
    /// more input needed. A chunked body is de-chunked into `chunked_body`.
    pub fn body_end(&mut self, input: &[u8], chunked_body: &mut Vec<u8>) -> Result<Option<usize>, ResponseError> {
        let limits = Limits { head_bytes_max: RESPONSE_HEAD_BYTES_MAX, body_bytes_max: RESPONSE_BYTES_MAX };
        match &mut self.framing {
            BodyFraming::None => Ok(Some(self.length)),
            BodyFraming::Length(length) => Ok((input.len() >= self.length + *length).then_some(self.length + *length)),
            BodyFraming::Chunked(_) if input.len() - self.length > RESPONSE_RAW_BYTES_MAX => {
                Err(ResponseError::TooLarge)
            }
            BodyFraming::Chunked(chunked) => {
                chunked.advance(input, chunked_body, limits).map_err(|error| match error {
                    HttpError::BodyTooLarge => ResponseError::TooLarge,
                    _ => ResponseError::Malformed("bad chunked framing"),
                })
            }
            BodyFraming::UntilClose if input.len() - self.length > RESPONSE_BYTES_MAX => Err(ResponseError::TooLarge),
            BodyFraming::UntilClose => Ok(None),
        }
    }

    /// The response with `body`; the head keeps an empty one.
    pub fn take_response(&mut self, body: Bytes) -> OriginResponse {
        OriginResponse { body, ..std::mem::take(&mut self.response) }
    }
}

impl Head {
    /// The announced body length (`Content-Length`), when the body is
    /// framed by one.
    pub fn body_length(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::None => Some(0),
            BodyFraming::Length(length) => Some(length as u64),
            _ => None,
        }
    }

    /// A decoder for the body that follows this head, read as it arrives.
    pub fn body_decoder(&self) -> BodyDecoder {
        BodyDecoder {
            state: match self.framing {
                BodyFraming::None => BodyState::Done,
                BodyFraming::Length(0) => BodyState::Done,
                BodyFraming::Length(length) => BodyState::Length { remaining: length as u64 },
                BodyFraming::Chunked(_) => BodyState::Chunk(ChunkPart::SizeLine),
                BodyFraming::UntilClose => BodyState::UntilClose,
            },
            trailer_bytes: 0,
        }
    }

    /// The head alone, as a response without a body.
    pub fn response(&self) -> &OriginResponse {
        &self.response
    }
}

/// What [`BodyDecoder::step`] found at the front of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// Body bytes, taken from the input without a copy.
    Data(Bytes),
    /// The input holds no more of the body yet: read more.
    More,
    /// The body ended; what is left in the input follows the message.
    End,
}

/// A response body decoded as it arrives (gateway streaming): de-chunked,
/// bounded by its framing, never buffered whole. The caller reads into a
/// `BytesMut` and calls [`BodyDecoder::step`] until it says `More`.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: BodyState,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length { remaining: u64 },
    Chunk(ChunkPart),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPart {
    SizeLine,
    Data { remaining: u64 },
    DataEnd,
    Trailers,
}

impl BodyDecoder {
    /// A body of `length` bytes.
    pub fn length(length: u64) -> BodyDecoder {
        let state = if length == 0 { BodyState::Done } else { BodyState::Length { remaining: length } };
        BodyDecoder { state, trailer_bytes: 0 }
    }

    /// A chunked body.
    pub fn chunked() -> BodyDecoder {
        BodyDecoder { state: BodyState::Chunk(ChunkPart::SizeLine), trailer_bytes: 0 }
    }

    /// Takes the next body bytes, or framing, off the front of `input`.
    pub fn step(&mut self, input: &mut bytes::BytesMut) -> Result<BodyStep, ResponseError> {
        let malformed = |_| ResponseError::Malformed("bad chunked framing");
        loop {
            match self.state {
                BodyState::Done => return Ok(BodyStep::End),
                BodyState::Length { remaining } => {
                    if input.is_empty() {
                        return Ok(BodyStep::More);
                    }
                    let take = remaining.min(input.len() as u64) as usize;
                    let left = remaining - take as u64;
                    self.state = if left == 0 { BodyState::Done } else { BodyState::Length { remaining: left } };
                    return Ok(BodyStep::Data(input.split_to(take).freeze()));
                }
                BodyState::UntilClose => {
                    if input.is_empty() {
                        return Ok(BodyStep::More);
                    }
                    return Ok(BodyStep::Data(input.split().freeze()));
                }
                BodyState::Chunk(ChunkPart::SizeLine) => {
                    let Some(line_end) = find_crlf(input, CHUNK_LINE_BYTES_MAX).map_err(malformed)? else {
                        return Ok(BodyStep::More);
                    };
                    let size = parse_chunk_size(&input[..line_end]).map_err(malformed)?;
                    let _ = input.split_to(line_end + 2);
                    self.state = BodyState::Chunk(match size {
                        0 => ChunkPart::Trailers,
                        size => ChunkPart::Data { remaining: size },
                    });
                }
                BodyState::Chunk(ChunkPart::Data { remaining }) => {
                    if input.is_empty() {
                        return Ok(BodyStep::More);
                    }
                    let take = remaining.min(input.len() as u64) as usize;
                    let left = remaining - take as u64;
                    self.state = BodyState::Chunk(if left == 0 {
                        ChunkPart::DataEnd
                    } else {
                        ChunkPart::Data { remaining: left }
                    });
                    return Ok(BodyStep::Data(input.split_to(take).freeze()));
                }
                BodyState::Chunk(ChunkPart::DataEnd) => {
                    if input.len() < 2 {
                        return Ok(BodyStep::More);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ResponseError::Malformed("chunk data not followed by CRLF"));
                    }
                    let _ = input.split_to(2);
                    self.state = BodyState::Chunk(ChunkPart::SizeLine);
                }
                BodyState::Chunk(ChunkPart::Trailers) => {
                    let budget = RESPONSE_HEAD_BYTES_MAX.saturating_sub(self.trailer_bytes);
                    let Some(line_end) = find_crlf(input, budget).map_err(malformed)? else {
                        return Ok(BodyStep::More);
                    };
                    let _ = input.split_to(line_end + 2);
                    self.trailer_bytes += line_end + 2;
                    if line_end == 0 {
                        self.state = BodyState::Done;
                    }
                }
            }
        }
    }

    /// The connection reached its end. Fine for a body that runs to the
    /// close (it is then complete); an error for any other unfinished body.
    pub fn at_eof(&mut self) -> Result<(), ResponseError> {
        match self.state {
            BodyState::UntilClose | BodyState::Done => {
                self.state = BodyState::Done;
                Ok(())
            }
            _ => Err(ResponseError::Malformed("the origin closed the connection mid-body")),
        }
    }

    /// The body runs until the connection closes (its connection is not reused).
    pub fn until_close(&self) -> bool {
        self.state == BodyState::UntilClose
    }
}

/// Parses the response head once it is in `input`, skipping interim (1xx)
/// responses (their bytes are drained from `input`). None: more input needed.
pub fn parse_head(input: &mut Vec<u8>, expect_body: bool) -> Result<Option<Head>, ResponseError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut parsed = httparse::Response::new(&mut fields);
        let length = match parsed.parse(input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if input.len() > RESPONSE_HEAD_BYTES_MAX => {
                return Err(ResponseError::Malformed("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ResponseError::Malformed("unparsable response head")),
        };
        let status = parsed.code.expect("complete parse has a status");
        if (100..200).contains(&status) && status != 101 {
            input.drain(..length);
            continue;
        }
        if status == 101 {
            return Err(ResponseError::Malformed("the origin switched protocols"));
        }
        return head_of(&parsed, length, expect_body).map(Some);
    }
}

fn head_of(parsed: &httparse::Response<'_, '_>, length: usize, expect_body: bool) -> Result<Head, ResponseError> {
    let status = parsed.code.expect("complete parse has a status");
    let connection = connection_options(parsed.headers);
    let mut fields = CacheFields::default();
    let mut headers = Vec::with_capacity(512);
    let mut content_length: Option<usize> = None;
    // RFC 9112 §6.3: with Transfer-Encoding, its final coding decides.
    let mut transfer_encoded = false;
    let mut chunked = false;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            for member in field.value.split(|&b| b == b',') {
                let value = content_length_value(member.trim_ascii())?;
                if content_length.is_some_and(|c| c != value) {
                    return Err(ResponseError::Malformed("conflicting Content-Length"));
                }
                content_length = Some(value);
            }
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
                transfer_encoded = true;
                chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
        pick_cache_field(&mut fields, field);
        let dropped = is_hop_by_hop(name)
            || named_by_connection(&connection, name)
            || name.eq_ignore_ascii_case(b"date")
            || name.eq_ignore_ascii_case(b"age");
        if !dropped {
            headers.extend_from_slice(b"\r\n");
            headers.extend_from_slice(name);
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(field.value);
        }
    }
    fields.content_length = content_length.map(|n| n as u64);
    let bodyless = !expect_body || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = match (bodyless, transfer_encoded, chunked, content_length) {
        (true, ..) => BodyFraming::None,
        (false, true, true, _) => BodyFraming::Chunked(Chunked::new(length)),
        // A final coding other than chunked: the body ends at close.
        (false, true, false, _) => BodyFraming::UntilClose,
        (false, false, _, Some(n)) => BodyFraming::Length(n),
        (false, false, _, None) => BodyFraming::UntilClose,
    };
    let version_minor = parsed.version.unwrap_or(1);
    // Both length fields: the framing is in doubt, so the connection is not
    // reused after this response (RFC 9112 §6.3, item 3).
    let ambiguous = transfer_encoded && content_length.is_some();
    let keep_alive = version_minor == 1 && !named_by_connection(&connection, b"close") && !ambiguous;
    let response = OriginResponse {
        status,
        reason: Bytes::copy_from_slice(parsed.reason.unwrap_or("").as_bytes()),
        headers: Bytes::from(headers),
        body: Bytes::new(),
        fields,
    };
    Ok(Head { length, keep_alive, framing, response })
}

/// A Content-Length value: digits only (no sign, no space inside).
fn content_length_value(digits: &[u8]) -> Result<usize, ResponseError> {
    let bad = ResponseError::Malformed("bad Content-Length");
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    Ok(digits.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Records `field` in `fields` when a cache decision reads it.
fn pick_cache_field(fields: &mut CacheFields, field: &httparse::Header<'_>) {
    let value = || Some(Bytes::copy_from_slice(field.value.trim_ascii()));
    let comma = |existing: &mut Option<Bytes>| *existing = join(existing.take(), field.value, b", ");
    match field.name.to_ascii_lowercase().as_str() {
        "cache-control" => comma(&mut fields.cache_control),
        "cdn-cache-control" => comma(&mut fields.cdn_cache_control),
        "shardgate-cache-control" => comma(&mut fields.shardgate_cache_control),
        "expires" => fields.expires = value(),
        "date" => fields.date = value(),
        // RFC 9111 §5.1: the first member of a list-valued Age counts.
        "age" => comma(&mut fields.age),
        "vary" => comma(&mut fields.vary),
        "etag" => fields.etag = value(),
        "last-modified" => fields.last_modified = value(),
        "content-encoding" => comma(&mut fields.content_encoding),
        "surrogate-key" => fields.surrogate_key = join(fields.surrogate_key.take(), field.value, b" "),
        "cache-tag" => comma(&mut fields.cache_tag),
        "location" => fields.location = value(),
        "content-location" => fields.content_location = value(),
        "set-cookie" => fields.set_cookie = true,
        _ => {}
    }
}

/// Joins repeated field lines with `separator` (RFC 9110 §5.3).
fn join(existing: Option<Bytes>, value: &[u8], separator: &[u8]) -> Option<Bytes> {
    let value = value.trim_ascii();
    match existing {
        None => Some(Bytes::copy_from_slice(value)),
        Some(first) => Some(Bytes::from([&first[..], separator, value].concat())),
    }
}

#[cfg(test)]
mod tests;
