//! What a client gets from what the gateway holds: a stored variant or an
//! origin's answer becomes a response with its `Age`, `Date`, `X-Cache`
//! and `Cache-Status` (RFC 9211), answered 304 when the client's
//! validators match (RFC 9110 §13.2.2), or narrowed to the byte range it
//! asked for (§14: 206, or 416).

use std::time::SystemTime;

use bytes::Bytes;
use shardgate_http::body::BodyReader;
use shardgate_http::codec::Method;
use shardgate_http::origin::OriginResponse;
use shardgate_http::proxy::ProxyRequest;
use shardgate_http::response::{
    CacheStatus, ContentRange, Extra, Forward, Proxied, ProxiedBody, Response, StreamBody, PROBLEM_CONTENT_TYPE,
};
use shardgate_shards::httpcache::{http_date, parse_http_date_ms, HttpDate, Variant};
use shardgate_shards::range::{evaluate, if_range_holds, RangeAnswer};

use crate::runtime::metrics::CacheResult;
use crate::runtime::unix_ms;

/// The representation a response carries, as Range and conditionals see it.
#[derive(Clone, Debug, Default)]
pub(super) struct Facts {
    pub status: u16,
    /// Its length, when known (a stream of unknown length has none).
    pub length: Option<u64>,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
}

impl Facts {
    pub fn of_variant(variant: &Variant) -> Facts {
        Facts {
            status: variant.status,
            length: Some(variant.body.len()),
            etag: variant.etag.clone(),
            last_modified: variant.last_modified.clone(),
        }
    }

    pub fn of_origin(response: &OriginResponse, length: Option<u64>) -> Facts {
        Facts {
            status: response.status,
            length,
            etag: response.fields.etag.clone(),
            last_modified: response.fields.last_modified.clone(),
        }
    }
}

/// The `Date` of an origin's answer: its own when valid (as an
/// IMF-fixdate), else the time it arrived (RFC 9110 §6.6.1: a recipient
/// adds one to what it caches or forwards).
pub(super) fn origin_date(response: &OriginResponse) -> HttpDate {
    let sent = response.fields.date.as_deref().and_then(parse_http_date_ms);
    http_date(sent.unwrap_or_else(|| unix_ms(SystemTime::now())))
}

/// A stored variant as a response, `Age` from `now_ms`.
pub(super) fn variant_response(variant: &Variant, now_ms: u64, result: CacheResult, status: CacheStatus) -> Response {
    let age_s = variant.freshness.age_ms(now_ms) / 1000;
    let (body, pieces) = match variant.body.single() {
        Some(one) => (one, ProxiedBody::Inline),
        None => (Bytes::new(), ProxiedBody::Pieces(variant.body.clone())),
    };
    let proxied = Proxied {
        reason: variant.reason.clone(),
        headers: variant.headers.clone(),
        age_s: Some(age_s),
        date: Some(variant.date),
        x_cache: Some(result.name()),
        cache_status: Some(status),
        body: pieces,
        ..Proxied::default()
    };
    Response { status: variant.status, body, extra: Extra::Proxied(Box::new(proxied)), ..Response::default() }
}

/// An origin's answer as a response: its fields, `Date`, the `Age` to
/// send, and its body (`stream` for a body still arriving, of `length`
/// when known).
pub(super) fn origin_response(
    response: &OriginResponse,
    age_s: Option<u64>,
    result: CacheResult,
    status: CacheStatus,
    stream: Option<(BodyReader, Option<u64>)>,
) -> Response {
    let (body, proxied_body) = match stream {
        None => (response.body.clone(), ProxiedBody::Inline),
        Some((reader, length)) => (Bytes::new(), ProxiedBody::Stream(StreamBody { reader, skip: 0, length })),
    };
    let proxied = Proxied {
        reason: response.reason.clone(),
        headers: response.headers.clone(),
        age_s,
        date: Some(origin_date(response)),
        x_cache: Some(result.name()),
        cache_status: Some(status),
        body: proxied_body,
        ..Proxied::default()
    };
    Response { status: response.status, body, extra: Extra::Proxied(Box::new(proxied)), ..Response::default() }
}

/// An error of shardgate's own (502, 503, 504) marked with its `X-Cache`
/// and `Cache-Status`.
pub(super) fn error_response(error: Response, result: CacheResult, status: CacheStatus) -> Response {
    let reason = Bytes::from_static(shardgate_http::response::reason(error.status).as_bytes());
    let proxied = Proxied { reason, x_cache: Some(result.name()), cache_status: Some(status), ..Proxied::default() };
    Response { extra: Extra::Proxied(Box::new(proxied)), ..error }
}

/// Sets `Cache-Status`'s `key` (with `--cache-status-key`) and marks the
/// response as a coalesced waiter's.
pub(super) fn annotate(response: &mut Response, key: Option<&Bytes>, collapsed: bool) {
    if let Extra::Proxied(proxied) = &mut response.extra {
        if let Some(status) = &mut proxied.cache_status {
            status.collapsed |= collapsed;
        }
        if let Some(key) = key {
            proxied.cache_key = Some(readable_key(key));
        }
    }
}

/// The cache key as a URL for `Cache-Status`'s `key`: `scheme://authority/target`.
fn readable_key(key: &Bytes) -> Bytes {
    let mut parts = Vec::with_capacity(3);
    let mut rest = &key[..];
    while rest.len() >= 4 {
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(part) = rest.get(4..4 + length) else { break };
        parts.push(part);
        rest = &rest[4 + length..];
    }
    match parts.as_slice() {
        [scheme, authority, target] => Bytes::from([scheme, &b"://"[..], authority, target].concat()),
        _ => key.clone(),
    }
}

/// The client's view of a representation: 304 when its validators match
/// (If-None-Match, else If-Modified-Since), the range it asked for (206,
/// or 416), else the whole. Only a complete 200 is narrowed or answered
/// 304; HEAD sees what GET would. `facts` are only looked at when the
/// request asks for one of these (most hits do not).
#[inline]
pub(super) fn present(request: &ProxyRequest, response: Response, facts: impl FnOnce() -> Facts) -> Response {
    if !request.asks.validators_or_range {
        return response;
    }
    present_facts(request, response, &facts())
}

fn present_facts(request: &ProxyRequest, mut response: Response, facts: &Facts) -> Response {
    if facts.status != 200 {
        return response;
    }
    if not_modified(request, facts) {
        response.status = 304;
        response.body = Bytes::new();
        if let Extra::Proxied(proxied) = &mut response.extra {
            proxied.reason = Bytes::from_static(b"Not Modified");
            proxied.body = ProxiedBody::Inline;
        }
        return response;
    }
    let range = request.field(b"range");
    let (Some(range), Some(length)) = (range, facts.length) else {
        return response;
    };
    if !matches!(request.method, Method::Get | Method::Head) {
        return response;
    }
    let applies = if_range_holds(request.field(b"if-range"), facts.etag.as_deref(), facts.last_modified.as_deref());
    match (applies, evaluate(Some(range), length)) {
        (false, _) | (true, RangeAnswer::Full) => response,
        (true, RangeAnswer::Partial { first, last }) => narrow(response, first, last, length),
        (true, RangeAnswer::Unsatisfiable) => unsatisfiable(response, length),
    }
}

/// The bytes `first..=last` of `response`'s body, as a 206.
fn narrow(mut response: Response, first: u64, last: u64, complete: u64) -> Response {
    let Extra::Proxied(proxied) = &mut response.extra else {
        return response;
    };
    match &mut proxied.body {
        ProxiedBody::Inline => response.body = response.body.slice(first as usize..=last as usize),
        ProxiedBody::Pieces(pieces) => {
            let slice = pieces.slice(first, last + 1);
            match slice.single() {
                Some(one) => {
                    response.body = one;
                    proxied.body = ProxiedBody::Inline;
                }
                None => *pieces = slice,
            }
        }
        ProxiedBody::Stream(stream) => {
            stream.skip = first;
            stream.length = Some(last - first + 1);
        }
    }
    proxied.reason = Bytes::from_static(b"Partial Content");
    proxied.content_range = Some(ContentRange::Bytes { first, last, complete });
    response.status = 206;
    response
}

/// A 416 with `Content-Range: bytes */length` and a problem body.
fn unsatisfiable(response: Response, complete: u64) -> Response {
    let problem = Response::problem(416, "the range asked for is outside the representation");
    let Extra::Proxied(proxied) = response.extra else {
        return problem;
    };
    let proxied = Proxied {
        reason: Bytes::from_static(b"Range Not Satisfiable"),
        content_range: Some(ContentRange::Unsatisfied { complete }),
        body: ProxiedBody::Inline,
        headers: Bytes::new(),
        date: None,
        ..*proxied
    };
    Response {
        content_type: Some(Bytes::from_static(PROBLEM_CONTENT_TYPE)),
        extra: Extra::Proxied(Box::new(proxied)),
        ..problem
    }
}

/// The client's validators match (RFC 9110 §13.2.2): `If-None-Match`
/// against the entity tag (weak comparison), else `If-Modified-Since`
/// against `Last-Modified` (§13.1.3).
fn not_modified(request: &ProxyRequest, facts: &Facts) -> bool {
    if let Some(tags) = request.field(b"if-none-match") {
        let Some(etag) = facts.etag.as_deref() else {
            return false;
        };
        let weak = |tag: &[u8]| tag.strip_prefix(b"W/").unwrap_or(tag).to_vec();
        let stored = weak(etag);
        return tags.split(|&b| b == b',').any(|t| t.trim_ascii() == b"*" || weak(t.trim_ascii()) == stored);
    }
    let since = request.field(b"if-modified-since").and_then(parse_http_date_ms);
    let modified = facts.last_modified.as_deref().and_then(parse_http_date_ms);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// `Cache-Status` of a hit: fresh or stale by `ttl_s`.
pub(super) fn hit_status(ttl_s: i64) -> CacheStatus {
    CacheStatus { hit: true, ttl_s: Some(ttl_s), ..CacheStatus::default() }
}

/// `Cache-Status` of a request that went forward.
pub(super) fn forward_status(fwd: Forward, fwd_status: Option<u16>, stored_ttl_s: Option<i64>) -> CacheStatus {
    CacheStatus {
        fwd: Some(fwd),
        fwd_status,
        stored: stored_ttl_s.is_some(),
        ttl_s: stored_ttl_s,
        ..CacheStatus::default()
    }
}
