//! From a decoded request to a response: the service endpoints and the
//! key-value API of SPEC §2 and §3.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use shardgate_shards::conditions::{Conditions, TagList};
use shardgate_shards::kv::{Op, Outcome, CONTENT_TYPE_DEFAULT, KEY_BYTES_MAX};
use shardgate_shards::route::shard_for_stored_key;

use crate::core::{Core, ReplyFuture};
use crate::durable::DurableFuture;
use crate::gateway::{self, ProxyRequest};
use crate::http::codec::{Method, Request};
use crate::http::response::{Extra, RateHeaders, Response};
use crate::limit::{self, LeaseWait, Verdict};
use crate::log::Durability;
use crate::mesh::Answer;
use crate::metrics::Route;
use crate::reader::read_cold;

const KV_PREFIX: &[u8] = b"/v1/kv/";
const KV_ALLOW: &str = "GET, HEAD, PUT, DELETE";
const SERVICE_ALLOW: &str = "GET, HEAD";
/// Longest accepted `?ttl=`: about 136 years, so expiry math cannot overflow.
const TTL_SECONDS_MAX: u64 = u32::MAX as u64;

/// What dispatching a request produced.
pub enum Step {
    Ready(Response),
    /// Sent to the owner shard; the response is built from its outcome.
    Remote {
        reply: ReplyFuture,
        owner: u32,
    },
    /// Applied here; answered once its log record is durable.
    Durable {
        wait: DurableFuture,
        response: Response,
    },
    /// The value was evicted: read from its segment on this core.
    Disk {
        read: Pin<Box<dyn Future<Output = Result<Outcome, Response>>>>,
        owner: u32,
    },
    /// Gateway mode: relayed from (or answered for) an origin, here or on
    /// the cache key's owner core.
    Gateway(Pin<Box<dyn Future<Output = Response>>>),
    /// The client's rate limit needs a lease from another shard first: the
    /// request is left unconsumed and decided again once `LeaseWait` ends.
    Wait(LeaseWait),
}

/// A dispatched request: its step, its route (for metrics) and the
/// RateLimit fields its response carries.
pub struct Dispatched {
    pub step: Step,
    pub route: Route,
    pub rate: Option<RateHeaders>,
}

/// Routes one request. Local key-value ops run on this core's shard now.
/// Everything but the service endpoints passes the client's rate limit first.
pub fn dispatch(core: &Rc<Core>, request: &Request<'_>, peer: Option<IpAddr>, now_ms: u64) -> Dispatched {
    let method = request.method;
    let (path, query) = split_target(request.target);
    let route = match path {
        b"/healthz" => Route::Healthz,
        b"/readyz" => Route::Readyz,
        b"/metrics" => Route::Metrics,
        _ if core.gateway.is_some() => Route::Gateway,
        _ if path.starts_with(KV_PREFIX) => Route::Kv,
        _ => Route::Other,
    };
    if matches!(route, Route::Kv | Route::Other | Route::Gateway) {
        if !core.mesh.is_ready() {
            let response = Response::overloaded("the shards are recovering their logs; retry shortly");
            return Dispatched { step: Step::Ready(response), route, rate: None };
        }
        let rate = match limit::check(core, request, peer, now_ms) {
            Verdict::Pass(rate) => rate,
            Verdict::Refuse(response, rate) => return Dispatched { step: Step::Ready(response), route, rate },
            Verdict::Wait(wait) => return Dispatched { step: Step::Wait(wait), route, rate: None },
        };
        let step = match path.strip_prefix(KV_PREFIX) {
            _ if route == Route::Gateway => gateway(core, request, peer),
            Some(raw_key) => kv(core, request, raw_key, query, now_ms),
            None => Step::Ready(Response::problem(404, "no such resource")),
        };
        return Dispatched { step, route, rate };
    }
    Dispatched { step: Step::Ready(service(core, method, route)), route, rate: None }
}

/// Hands a gateway request to its owner core: this one, or another
/// through the mesh.
fn gateway(core: &Rc<Core>, request: &Request<'_>, peer: Option<IpAddr>) -> Step {
    let proxy_request = match ProxyRequest::parse(request, peer) {
        Ok(proxy_request) => proxy_request,
        Err(response) => return Step::Ready(response),
    };
    let owner = gateway::owner(&proxy_request, core.shard_count());
    if owner == core.id {
        if let Some(hit) = gateway::try_hit(core, &proxy_request) {
            return Step::Ready(hit);
        }
        return Step::Gateway(Box::pin(gateway::handle(Rc::clone(core), proxy_request)));
    }
    match core.forward_gateway(owner, proxy_request) {
        Ok(reply) => Step::Gateway(Box::pin(async move {
            match reply.await {
                Answer::Gateway(response) => response,
                _ => unreachable!("a gateway request is answered with a response"),
            }
        })),
        Err(response) => Step::Ready(response),
    }
}

/// Answers a service endpoint (never rate limited).
fn service(core: &Core, method: Method, route: Route) -> Response {
    if !matches!(method, Method::Get | Method::Head) {
        return Response { extra: Extra::Allow(&SERVICE_ALLOW), ..Response::problem(405, "use GET or HEAD") };
    }
    match route {
        Route::Healthz => Response::text(200, "ok\n"),
        Route::Readyz if core.mesh.is_ready() => Response::text(200, "ready\n"),
        Route::Readyz => Response::overloaded("the shards are recovering their logs"),
        _ => Response {
            status: 200,
            content_type: Some(Bytes::from_static(b"text/plain; version=0.0.4; charset=utf-8")),
            body: Bytes::from(core.metrics_all.render(&core.mesh)),
            ..Response::default()
        },
    }
}

/// Builds the shard op of a key-value request, copying out of the input only
/// what the op keeps, and applies or forwards it.
fn kv(core: &Rc<Core>, request: &Request<'_>, raw_key: &[u8], query: &[u8], now_ms: u64) -> Step {
    let key = match decode_key(raw_key) {
        Ok(key) => key,
        Err(response) => return Step::Ready(response),
    };
    let shard_count = core.shard_count();
    let owner = shard_for_stored_key(&key, shard_count);
    let conditions = Conditions {
        if_match: request.if_match.map(TagList::parse),
        if_none_match: request.if_none_match.map(TagList::parse),
    };
    let local = owner == core.id;
    let op = match request.method {
        Method::Get | Method::Head if local => {
            return match core.read(now_ms, &key, &conditions) {
                Outcome::Cold { location, content_type, etag } => {
                    let key = Bytes::copy_from_slice(&key);
                    let read = Box::pin(read_cold(Rc::clone(core), key, location, content_type, etag));
                    Step::Disk { read, owner }
                }
                outcome => Step::Ready(kv_response(outcome, owner, shard_count)),
            };
        }
        Method::Get | Method::Head => Op::Get { key: Bytes::copy_from_slice(&key), conditions },
        Method::Delete => Op::Delete { key: Bytes::copy_from_slice(&key), conditions },
        Method::Put => {
            let ttl_ms = match parse_ttl(query) {
                Ok(ttl) => ttl.map(|s| s * 1000),
                Err(response) => return Step::Ready(with_shard(response, owner, shard_count)),
            };
            Op::Put {
                key: Bytes::copy_from_slice(&key),
                value: Bytes::copy_from_slice(request.body),
                content_type: request
                    .content_type
                    .map_or(Bytes::from_static(CONTENT_TYPE_DEFAULT), Bytes::copy_from_slice),
                ttl_ms,
                conditions,
            }
        }
        _ => {
            let response =
                Response { extra: Extra::Allow(&KV_ALLOW), ..Response::problem(405, "use GET, HEAD, PUT or DELETE") };
            return Step::Ready(with_shard(response, owner, shard_count));
        }
    };
    let is_write = !matches!(op, Op::Get { .. });
    let sync = match wants_sync(request.x_durability, core.log.borrow().durability) {
        Ok(sync) => sync && is_write,
        Err(response) => return Step::Ready(with_shard(response, owner, shard_count)),
    };
    if !local {
        return match core.forward(owner, op, sync) {
            Ok(reply) => Step::Remote { reply, owner },
            Err(response) => Step::Ready(with_shard(response, owner, shard_count)),
        };
    }
    if let Some(refusal) = core.write_refusal().filter(|_| is_write) {
        return Step::Ready(with_shard(refusal, owner, shard_count));
    }
    let (outcome, logged_end) = core.apply(now_ms, op);
    let response = kv_response(outcome, owner, shard_count);
    match logged_end.filter(|_| sync) {
        Some(end) => Step::Durable { wait: DurableFuture { log: Rc::clone(&core.log), end }, response },
        None => Step::Ready(response),
    }
}

/// Whether a write waits for fdatasync: `X-Durability: sync` asks for it
/// whatever the server default, `async` waives a `sync` default.
pub(crate) fn wants_sync(header: Option<&[u8]>, default: Durability) -> Result<bool, Response> {
    match header {
        None => Ok(default == Durability::Sync),
        Some(value) if value.eq_ignore_ascii_case(b"sync") => Ok(true),
        Some(value) if value.eq_ignore_ascii_case(b"async") => Ok(false),
        Some(_) => Err(Response::problem(400, "X-Durability must be sync or async")),
    }
}

fn with_shard(response: Response, owner: u32, shard_count: u32) -> Response {
    Response { shard: Some((owner, shard_count)), ..response }
}

/// Maps a shard's outcome to the HTTP response of SPEC §2.
pub fn kv_response(outcome: Outcome, owner: u32, shard_count: u32) -> Response {
    let response = match outcome {
        Outcome::Value { value, content_type, etag } => Response {
            status: 200,
            content_type: Some(content_type),
            etag: Some(etag),
            body: value,
            ..Response::default()
        },
        Outcome::NotModified { etag } => Response { etag: Some(etag), ..Response::new(304) },
        Outcome::NotFound => Response::problem(404, "no such key"),
        Outcome::Stored { etag, created, .. } => {
            Response { etag: Some(etag), ..Response::new(if created { 201 } else { 200 }) }
        }
        Outcome::Deleted => Response::new(204),
        Outcome::PreconditionFailed => {
            Response::problem(412, "a precondition (If-Match / If-None-Match) does not hold")
        }
        // A cold read is resolved by reading the segment before this point.
        Outcome::Cold { .. } => Response::problem(500, "a value was not read back from disk"),
    };
    with_shard(response, owner, shard_count)
}

/// Splits a request-target into path and query; absolute-form targets
/// (`http://host/path`) are reduced to their path.
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let path = origin_form(target);
    match path.iter().position(|&b| b == b'?') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, b""),
    }
}

/// An absolute-form target (`http://host/path?q`) reduced to origin form
/// (`/path?q`); any other target as it is.
pub(crate) fn origin_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.iter().position(|&b| b == b'/').map_or(b"/", |i| &rest[i..]);
        }
    }
    target
}

/// Percent-decodes a key and checks its length (1 to 1024 bytes). Borrows
/// the input when there is nothing to decode.
fn decode_key(raw: &[u8]) -> Result<Cow<'_, [u8]>, Response> {
    let key = if raw.contains(&b'%') {
        let mut decoded = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err(Response::problem(400, "invalid percent-encoding in key"));
                };
                decoded.push(byte);
                i += 3;
            } else {
                decoded.push(raw[i]);
                i += 1;
            }
        }
        Cow::Owned(decoded)
    } else {
        Cow::Borrowed(raw)
    };
    if key.is_empty() {
        return Err(Response::problem(404, "no key in path: use /v1/kv/{key}"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Response::problem(414, "key longer than 1024 bytes"));
    }
    Ok(key)
}

/// Reads `ttl=SECONDS` from a query string; other parameters are ignored.
fn parse_ttl(query: &[u8]) -> Result<Option<u64>, Response> {
    let Some(value) = query.split(|&b| b == b'&').find_map(|pair| pair.strip_prefix(b"ttl=")) else {
        return Ok(None);
    };
    let seconds = std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| (1..=TTL_SECONDS_MAX).contains(&s));
    match seconds {
        Some(s) => Ok(Some(s)),
        None => Err(Response::problem(400, "ttl must be a whole number of seconds from 1 to 4294967295")),
    }
}

#[cfg(test)]
mod tests;
