//! A client request in owned form, for the gateway: copied once out of
//! the connection's input so it can travel to its owner core, wait for an
//! origin, or be queued as an asynchronous write, and encoded for the origin.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use shardgate_shards::queued::QueuedWrite;
use shardgate_shards::route::key_hash;

use crate::body::BodyReader;
use crate::codec::{Method, Request, HEADERS_MAX};
use crate::fields::{connection_options, is_hop_by_hop, named_by_connection, origin_form, push_field};
use crate::response::Response;

/// A client request in owned form, sendable to its owner core.
#[derive(Debug, PartialEq)]
pub struct ProxyRequest {
    pub method: Method,
    pub method_token: Bytes,
    pub target: Bytes,
    /// Scheme, authority and target: what the cache stores under ([`cache_key`]).
    pub key: Bytes,
    pub hash: u64,
    /// The request's end-to-end header fields, as the origin gets them (name, value).
    pub fields: Vec<(Bytes, Bytes)>,
    pub peer: Option<IpAddr>,
    pub body: Bytes,
    /// A body streamed from the client instead of `body` (a large or
    /// chunked upload in gateway mode): read once, so never retried.
    pub streamed: Option<StreamedRequestBody>,
    /// What the fields ask of a cache, found once while they are copied.
    pub asks: Asks,
}

/// What a request's fields ask of a cache, so that a hit need not scan
/// them again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asks {
    /// `Range`, `If-None-Match`, `If-Modified-Since` or `If-Range` is sent.
    pub validators_or_range: bool,
    /// `Cache-Control: no-cache` or `max-age=0` (or `Pragma: no-cache`
    /// without a `Cache-Control`): no stored response without revalidation.
    pub no_stored: bool,
    /// A `Cookie` is sent.
    pub cookie: bool,
}

impl Asks {
    /// Reads `fields` (name, value) once.
    pub fn of(fields: &[(Bytes, Bytes)]) -> Asks {
        let mut asks = Asks::default();
        let mut cache_control = false;
        let mut pragma = false;
        for (name, value) in fields {
            let listed =
                |directive: &[u8]| value.split(|&b| b == b',').any(|d| d.trim_ascii().eq_ignore_ascii_case(directive));
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            match name.len() {
                5 if is(b"range") => asks.validators_or_range = true,
                6 if is(b"cookie") => asks.cookie = true,
                6 if is(b"pragma") => pragma |= listed(b"no-cache"),
                8 if is(b"if-range") => asks.validators_or_range = true,
                13 if is(b"if-none-match") => asks.validators_or_range = true,
                13 if is(b"cache-control") => {
                    cache_control = true;
                    asks.no_stored |= listed(b"no-cache") || listed(b"max-age=0");
                }
                17 if is(b"if-modified-since") => asks.validators_or_range = true,
                _ => {}
            }
        }
        asks.no_stored |= pragma && !cache_control;
        asks
    }
}

/// A request body arriving from the client while the request is relayed.
#[derive(Debug, PartialEq)]
pub struct StreamedRequestBody {
    pub reader: BodyReader,
    /// `Content-Length` when the client sent one; else the body goes on chunked.
    pub length: Option<u64>,
}

impl ProxyRequest {
    /// Copies what the gateway needs out of a decoded request.
    ///
    /// The fields kept are exactly the ones the origin receives: hop-by-hop
    /// fields and the ones `Connection` nominates are dropped here, once, and
    /// so are the client's own forwarding fields (`X-Forwarded-For`,
    /// `X-Forwarded-Host`, `X-Forwarded-Proto`, `Forwarded`) unless
    /// `trust_forwarded`. The cache key and every `Vary` value are computed
    /// from these fields, so what is stored always matches what was asked.
    /// A `Connection` that nominates `Host` is refused: the key would name a
    /// host the origin never saw.
    pub fn parse(request: &Request<'_>, peer: Option<IpAddr>, trust_forwarded: bool) -> Result<ProxyRequest, Response> {
        // The codec parsed this head already; only its fields are wanted
        // again. It is parsed where it lies, then copied once together with
        // the cache key (one allocation): the method, target and fields
        // become views of the copy, at the same offsets.
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut parsed = httparse::Request::new(&mut headers);
        if !matches!(parsed.parse(request.head), Ok(httparse::Status::Complete(_))) {
            return Err(Response::problem(400, "malformed request head"));
        }
        let host = parsed.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")).map(|h| h.value.trim_ascii());
        let target = origin_form(parsed.path.unwrap_or_default().as_bytes());
        let copy = head_and_key(request.head, host.unwrap_or_default(), target);
        let range = request.head.as_ptr_range();
        let view = |part: &[u8]| {
            let inside = range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end;
            match part.is_empty() {
                true => Bytes::new(),
                false if inside => {
                    let at = part.as_ptr() as usize - range.start as usize;
                    copy.slice(at..at + part.len())
                }
                // `origin_form` answers "/" for `http://host`, a static slice.
                false => Bytes::copy_from_slice(part),
            }
        };
        let connection = connection_options(parsed.headers);
        if named_by_connection(&connection, b"host") {
            return Err(Response::problem(400, "Connection may not nominate Host"));
        }
        let method_token = view(parsed.method.unwrap_or_default().as_bytes());
        let fields: Vec<(Bytes, Bytes)> = parsed
            .headers
            .iter()
            .filter(|h| {
                let name = h.name.as_bytes();
                !(is_hop_by_hop(name)
                    || named_by_connection(&connection, name)
                    || (!trust_forwarded && is_forwarding(name)))
            })
            .map(|h| (view(h.name.as_bytes()), view(h.value.trim_ascii())))
            .collect();
        let target = view(target);
        let key = copy.slice(request.head.len()..);
        Ok(ProxyRequest {
            method: request.method,
            method_token,
            hash: key_hash(&key),
            target,
            key,
            peer,
            body: Bytes::copy_from_slice(request.body),
            streamed: None,
            asks: Asks::of(&fields),
            fields,
        })
    }

    /// The first value of a field, by case-insensitive name.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }

    /// The value of a field as all its lines say it (RFC 9110 §5.3): one
    /// line as it is, several joined by ", " in order.
    pub fn field_value(&self, name: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut lines = self.fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..]);
        let first = lines.next()?;
        let Some(second) = lines.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = [first, b", ", second].concat();
        for line in lines {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(line);
        }
        Some(Cow::Owned(joined))
    }

    /// The request sends a cookie: its answer may be this client's alone.
    pub fn carries_cookie(&self) -> bool {
        self.asks.cookie
    }

    /// `Prefer: respond-async` (RFC 7240) is among the preferences.
    pub fn prefers_async(&self) -> bool {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"prefer"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|p| {
                p.split(|&b| b == b';').next().unwrap_or_default().trim_ascii().eq_ignore_ascii_case(b"respond-async")
            })
    }

    /// POST, PUT, PATCH, DELETE: the methods queued as asynchronous writes.
    pub fn is_unsafe(&self) -> bool {
        matches!(self.method, Method::Post | Method::Put | Method::Patch | Method::Delete)
    }

    /// GET, HEAD, OPTIONS, TRACE (RFC 9110 §9.2.1). Any other method, known
    /// or not, may change state: its non-error answer invalidates what is
    /// stored for its target (RFC 9111 §4.4).
    pub fn is_safe(&self) -> bool {
        matches!(self.method, Method::Get | Method::Head | Method::Options)
            || (self.method == Method::Other && &self.method_token[..] == b"TRACE")
    }

    /// The client asked that no stored response be used without
    /// revalidation: `Cache-Control: no-cache` (RFC 9111 §5.2.1.4) or
    /// `max-age=0` (§5.2.1.1, what a browser's reload sends), or `Pragma:
    /// no-cache` without a `Cache-Control` (§5.4).
    pub fn forbids_stored(&self) -> bool {
        self.asks.no_stored
    }

    /// The request as the origin gets it: hop-by-hop fields dropped,
    /// `X-Forwarded-For` and `Via` extended, and for a cache fill the
    /// client's own conditionals and ranges replaced by the cache's validators.
    pub fn encode_for_origin(&self, default_host: &[u8], fill: Option<&Validators>) -> Bytes {
        self.encode_with_body(default_host, fill, None)
    }

    /// The head of the request as the origin gets it when its body streams
    /// after it: `Content-Length` when the client gave one, else chunked.
    pub fn encode_streamed(&self, default_host: &[u8], length: Option<u64>) -> Bytes {
        self.encode_with_body(default_host, None, Some(length))
    }

    /// `streamed`: the body streams after the head, of this length when known.
    fn encode_with_body(&self, default_host: &[u8], fill: Option<&Validators>, streamed: Option<Option<u64>>) -> Bytes {
        let body_bytes = self.body.len();
        let mut out = Vec::with_capacity(256 + self.target.len() + body_bytes + self.fields.len() * 32);
        let method: &[u8] = if fill.is_some() { b"GET" } else { &self.method_token };
        out.extend_from_slice(method);
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let connection: Vec<u8> = self
            .fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.iter().copied().chain(*b","))
            .collect();
        const FILL_DROPPED: [&[u8]; 6] =
            [b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range"];
        let mut forwarded_for: Option<&[u8]> = None;
        let mut forwarded: Option<&[u8]> = None;
        let mut via: Option<&[u8]> = None;
        let mut has_host = false;
        for (name, value) in &self.fields {
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for = Some(value);
                continue;
            }
            if name.eq_ignore_ascii_case(b"forwarded") {
                forwarded = Some(value);
                continue;
            }
            if name.eq_ignore_ascii_case(b"via") {
                via = Some(value);
                continue;
            }
            let dropped = is_hop_by_hop(name)
                || named_by_connection(&connection, name)
                || (fill.is_some() && FILL_DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)));
            if dropped {
                continue;
            }
            has_host |= name.eq_ignore_ascii_case(b"host");
            push_field(&mut out, name, value);
        }
        if !has_host {
            push_field(&mut out, b"Host", default_host);
        }
        if let Some(peer) = self.peer {
            push_forwarding(&mut out, peer, forwarded_for, forwarded);
        }
        let value = match via {
            Some(prior) => [prior, b", 1.1 shardgate"].concat(),
            None => b"1.1 shardgate".to_vec(),
        };
        push_field(&mut out, b"Via", &value);
        if let Some(validators) = fill {
            if let Some(etag) = &validators.etag {
                push_field(&mut out, b"If-None-Match", etag);
            }
            if let Some(last_modified) = &validators.last_modified {
                push_field(&mut out, b"If-Modified-Since", last_modified);
            }
        }
        match streamed {
            _ if fill.is_some() => {}
            Some(Some(length)) => {
                push_field(&mut out, b"Content-Length", itoa::Buffer::new().format(length).as_bytes())
            }
            Some(None) => push_field(&mut out, b"Transfer-Encoding", b"chunked"),
            None if body_bytes > 0 || matches!(self.method, Method::Post | Method::Put | Method::Patch) => {
                push_field(&mut out, b"Content-Length", itoa::Buffer::new().format(body_bytes).as_bytes())
            }
            None => {}
        }
        out.extend_from_slice(b"\r\n");
        if fill.is_none() {
            out.extend_from_slice(&self.body);
        }
        Bytes::from(out)
    }
}

/// Appends `X-Forwarded-For` and `Forwarded` (RFC 7239) naming `peer`,
/// after the values the client sent when they were kept (trusted).
fn push_forwarding(out: &mut Vec<u8>, peer: IpAddr, forwarded_for: Option<&[u8]>, forwarded: Option<&[u8]>) {
    let address = peer.to_string();
    let value = match forwarded_for {
        Some(prior) => [prior, b", ", address.as_bytes()].concat(),
        None => address.clone().into_bytes(),
    };
    push_field(out, b"X-Forwarded-For", &value);
    // RFC 7239 §6: an IPv6 address is bracketed and quoted.
    let node = match peer {
        IpAddr::V4(_) => address,
        IpAddr::V6(_) => format!("\"[{address}]\""),
    };
    let element = format!("for={node};proto=http");
    let value = match forwarded {
        Some(prior) => [prior, b", ", element.as_bytes()].concat(),
        None => element.into_bytes(),
    };
    push_field(out, b"Forwarded", &value);
}

/// The client's own forwarding fields: kept only when the gateway trusts
/// whoever connects to it (`--trust-forwarded-for`), else replaced by its own.
fn is_forwarding(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 4] = [b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded"];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// `head` followed by the cache key of `host` and `target` ([`cache_key`]'s
/// layout, the host lower-cased), in one buffer: a request pays one
/// allocation for both.
fn head_and_key(head: &[u8], host: &[u8], target: &[u8]) -> Bytes {
    let mut buffer = Vec::with_capacity(head.len() + 16 + host.len() + target.len());
    buffer.extend_from_slice(head);
    push_key_part(&mut buffer, b"http");
    let at = buffer.len();
    push_key_part(&mut buffer, host);
    buffer[at + 4..].make_ascii_lowercase();
    push_key_part(&mut buffer, target);
    Bytes::from(buffer)
}

fn push_key_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_le_bytes());
    key.extend_from_slice(part);
}

/// The cache key of a request: its scheme, authority (lowercased) and
/// target, each as a 4-byte little-endian length and its bytes, so that no
/// two different requests share a key however their parts are split
/// (`h.example/p/a` + `/p/x` and `h.example` + `/p/a/p/x` differ).
pub fn cache_key(scheme: &[u8], authority: &[u8], target: &[u8]) -> Bytes {
    let mut key = Vec::with_capacity(12 + scheme.len() + authority.len() + target.len());
    for part in [scheme, authority, target] {
        push_key_part(&mut key, part);
    }
    Bytes::from(key)
}

/// The validators a revalidation sends.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
}

impl ProxyRequest {
    /// The request as it is queued for delivery.
    pub fn to_queued(&self) -> QueuedWrite {
        QueuedWrite {
            key_hash: self.hash,
            method: self.method_token.clone(),
            target: self.target.clone(),
            fields: self.fields.clone(),
            peer: self.peer,
            body: self.body.clone(),
        }
    }

    /// A queued write as a request again (its cache key is not kept: only
    /// its hash, which names its owner).
    pub fn from_queued(write: QueuedWrite) -> ProxyRequest {
        let method = match &write.method[..] {
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"PATCH" => Method::Patch,
            b"DELETE" => Method::Delete,
            _ => Method::Other,
        };
        ProxyRequest {
            method,
            method_token: write.method,
            target: write.target,
            key: Bytes::new(),
            hash: write.key_hash,
            peer: write.peer,
            body: write.body,
            streamed: None,
            asks: Asks::of(&write.fields),
            fields: write.fields,
        }
    }

    /// The request as delivered asynchronously: as sent by the client, plus
    /// `Idempotency-Key: {id}` after the request line.
    pub fn encode_for_delivery(&self, default_host: &[u8], id: &str) -> Bytes {
        let encoded = self.encode_for_origin(default_host, None);
        let line_end = encoded.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut out = Vec::with_capacity(encoded.len() + 40);
        out.extend_from_slice(&encoded[..line_end]);
        out.extend_from_slice(b"Idempotency-Key: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&encoded[line_end..]);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests;
