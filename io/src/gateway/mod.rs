//! Gateway mode (docs/spec.md §7): a caching reverse proxy in front of origins.
//!
//! A request's cache key (host, path and query) names its owner shard, as a
//! key names it in the key-value API; a request that lands elsewhere is
//! forwarded there whole ([`crate::core::Message::Gateway`]). The owner
//! holds the key's stored responses (`HttpCache`), its in-flight origin
//! fetch (`flight::Flight`) and talks to the origin, so coalescing and
//! invalidation need no coordination between cores.
//!
//! # The life of a GET
//! Fresh hit → `HIT`. Stale within stale-while-revalidate → `STALE` at once
//! and one background revalidation. Otherwise one fetch per key runs in its
//! own task (so a client hanging up does not cancel it) and every request
//! for the key waits for its answer's head: the first gets its answer
//! (`MISS`, `REVALIDATED`, or `STALE` under stale-if-error), the others
//! read the same body as it arrives while it is stored, or look the cache
//! up again. An uncacheable answer marks the key hit-for-miss: later
//! requests go to the origin at once, in parallel, never queued one behind
//! another (the Varnish waiting-list pitfall). A body larger than
//! `--cache-object-max` streams through unstored.
//!
//! # Layout
//! `state` (the core's gateway state and the exchange with origins),
//! `flight` (one fetch and its waiters), `serve` (responses from what is
//! stored or fetched: Range, conditionals, `Cache-Status`), `fetch` (the
//! fetches, streaming and storing), `writes` (asynchronous writes), and
//! here the entry points, purges and invalidation.

mod fetch;
mod flight;
mod serve;
mod state;
pub mod writes;
mod writes_queue;

use state::{bearer_matches, now_ms};
pub use state::{health_loop, start_admission, Gateway};

use std::rc::Rc;

use bytes::Bytes;
use shardgate_http::codec::Method;
use shardgate_http::origin::CacheFields;
use shardgate_http::proxy::cache_key;
pub use shardgate_http::proxy::{ProxyRequest, Validators};
use shardgate_http::response::{Extra, Forward, Response};
use shardgate_shards::cluster::Purge;
use shardgate_shards::httpcache::{Lookup, State};
use shardgate_shards::queued;
use shardgate_shards::route::{key_hash, shard_for_hash};

use crate::core::{Answer, Message};
use crate::runtime::metrics::CacheResult;

/// `Allow` of a refused CONNECT or TRACE: what the gateway relays.
const GATEWAY_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, PURGE";

/// Where asynchronous writes report their state: `/_writes/{id}`.
pub const WRITES_PREFIX: &[u8] = b"/_writes/";

/// Tags one purge may name.
const PURGE_TAGS_MAX: usize = 256;

/// The owner shard of a gateway request: the cache key's, or for a write's
/// status the shard named in its id.
pub fn owner(request: &ProxyRequest, shard_count: u32) -> u32 {
    if request.method == Method::Get {
        if let Some(id) = request.target.strip_prefix(WRITES_PREFIX) {
            if let Some(id) = queued::parse_id(id) {
                return shard_for_hash(id.key_hash, shard_count);
            }
        }
    }
    shard_for_hash(request.hash, shard_count)
}

/// Answers a GET or HEAD from a fresh stored response at once, on the
/// owner core, without the task and future a fetch needs (most requests of
/// a hit-heavy load end here). None: [`handle`] must serve it.
pub fn try_hit(gateway: &Gateway, request: &ProxyRequest) -> Option<Response> {
    let fetchable = matches!(request.method, Method::Get | Method::Head)
        && !request.target.starts_with(WRITES_PREFIX)
        && !request.carries_cookie()
        && request.streamed.is_none();
    if !fetchable || request.forbids_stored() {
        return None;
    }
    let now = now_ms();
    let lookup = gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name));
    let Lookup::Hit { variant, state: State::Fresh } = lookup else {
        return None;
    };
    gateway.core.metrics().gateway_result(CacheResult::Hit);
    Some(fetch::serve_stored(gateway, request, &variant, now, CacheResult::Hit))
}

/// Serves one gateway request on its owner core.
pub async fn handle(gateway: Rc<Gateway>, mut request: ProxyRequest) -> Response {
    let streamed = request.streamed.take();
    let (response, result) = match request.method {
        Method::Purge => purge(&gateway, &request).await,
        // A tunnel or a reflected trace is no business of an API gateway.
        Method::Other if matches!(&request.method_token[..], b"CONNECT" | b"TRACE") => {
            let response = Response::problem(405, "CONNECT and TRACE are not proxied");
            (Response { extra: Extra::Allow(&GATEWAY_ALLOW), ..response }, CacheResult::Bypass)
        }
        Method::Get if request.target.starts_with(WRITES_PREFIX) => {
            (writes::status(&gateway, &request, &request.target[WRITES_PREFIX.len()..]).await, CacheResult::Bypass)
        }
        _ if request.is_unsafe() && (gateway.config.async_writes || request.prefers_async()) => {
            // A queued write is kept whole: a streamed body is read first.
            if let Some(streamed) = streamed {
                match streamed.reader.collect(gateway.core.config().limits.body_bytes_max).await {
                    Ok(body) => request.body = body,
                    Err(_) => {
                        let response = Response::problem(413, "the request body ended early or is too large");
                        return Response { close: true, ..response };
                    }
                }
            }
            (writes::accept(&gateway, &request).await, CacheResult::Bypass)
        }
        // A request with a cookie is one client's: passed, never stored or
        // served from the cache (Varnish's builtin VCL does the same).
        Method::Get | Method::Head if request.carries_cookie() || streamed.is_some() => {
            fetch::pass(&gateway, &Rc::new(request), Forward::Bypass, streamed).await
        }
        Method::Get | Method::Head => fetch::cached(&gateway, &Rc::new(request)).await,
        _ => fetch::pass(&gateway, &Rc::new(request), Forward::Method, streamed).await,
    };
    let metrics = gateway.core.metrics();
    metrics.gateway_result(result);
    let cache = gateway.cache.borrow();
    metrics.gateway_cache(cache.bytes(), cache.objects());
    response
}

/// `PURGE`, with the admin token: of one URL (its every stored variant),
/// or with `Surrogate-Key: tag …` of every object carrying one of the
/// tags, on every shard (`Soft-Purge: 1` makes them stale instead).
async fn purge(gateway: &Rc<Gateway>, request: &ProxyRequest) -> (Response, CacheResult) {
    let token = gateway.config.admin_token.as_ref().map(|t| t.expose());
    let refused = match (request.field(b"authorization"), token) {
        (None, _) => Some(Response::problem(401, "PURGE needs Authorization: Bearer <admin token>")),
        (Some(_), None) => Some(Response::problem(403, "PURGE is disabled: no --admin-token is set")),
        (Some(given), Some(token)) if !bearer_matches(given, token) => {
            Some(Response::problem(403, "wrong admin token"))
        }
        _ => None,
    };
    if let Some(refused) = refused {
        return (refused, CacheResult::Bypass);
    }
    let Some(keys) = request.field_value(b"surrogate-key") else {
        let removed = gateway.cache.borrow_mut().remove(request.hash);
        let told = tell_nodes(gateway, Purge::Key { hash: request.hash, key: request.key.clone() });
        let response = match (removed, told) {
            (true, _) => Response::text(200, "purged\n"),
            // Another node may hold it: it drops it when the notice arrives.
            (false, true) => Response::text(202, "not stored on this node; sent to every other node\n"),
            (false, false) => Response::problem(404, "nothing stored under this key"),
        };
        return (response, CacheResult::Bypass);
    };
    let tags: Vec<Bytes> =
        keys.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()).map(Bytes::copy_from_slice).collect();
    if tags.is_empty() || tags.len() > PURGE_TAGS_MAX {
        let detail = format!("Surrogate-Key must name 1 to {PURGE_TAGS_MAX} tags");
        return (Response::problem(400, &detail), CacheResult::Bypass);
    }
    let soft = request.field(b"soft-purge").is_some_and(|v| v.trim_ascii() == b"1");
    tell_nodes(gateway, Purge::Tags { tags: tags.clone(), soft });
    let purged = purge_tags_everywhere(gateway, tags, soft).await;
    let body = format!("{{\"purged\":{purged},\"soft\":{soft}}}");
    let response = Response {
        status: 200,
        content_type: Some(Bytes::from_static(b"application/json")),
        body: Bytes::from(body),
        ..Response::default()
    };
    (response, CacheResult::Bypass)
}

/// Sends a purge to the cluster's other nodes; false when there is no
/// cluster (or NATS is unreachable: the other nodes miss it).
fn tell_nodes(gateway: &Gateway, purge: Purge) -> bool {
    match &gateway.cluster {
        Some(link) if link.has_nats() && link.nats_up() => {
            link.notice(purge);
            true
        }
        _ => false,
    }
}

/// Purges `tags` on this shard and every other; returns how many objects.
pub async fn purge_tags_everywhere(gateway: &Rc<Gateway>, tags: Vec<Bytes>, soft: bool) -> u64 {
    let core = Rc::clone(gateway.core());
    let mut purged = purge_tags(gateway, &tags, soft);
    let mut replies = Vec::new();
    for shard in (0..core.shard_count()).filter(|&s| s != core.id()) {
        match core.forward(shard, Message::PurgeTags { tags: tags.clone(), soft, reply: true }) {
            Ok(reply) => replies.push(reply),
            // A full mailbox: that shard's share is counted as nothing
            // rather than waited for; the purge is refused by no one.
            Err(_) => core.metrics().shed(),
        }
    }
    for reply in replies {
        if let Answer::Purged(count) = reply.await {
            purged += count;
        }
    }
    purged
}

/// Purges `tags` on this shard (a [`Message::PurgeTags`] from another core).
pub fn purge_tags(gateway: &Gateway, tags: &[Bytes], soft: bool) -> u64 {
    let purged = gateway.cache.borrow_mut().purge_tags(tags, soft, now_ms());
    let cache = gateway.cache.borrow();
    gateway.core.metrics().gateway_cache(cache.bytes(), cache.objects());
    purged
}

/// Drops what is stored under `hash` (a [`Message::Purge`] from another
/// core: an invalidation of a URL this shard owns).
pub fn purge_key(gateway: &Gateway, hash: u64, key: &[u8]) {
    let mut cache = gateway.cache.borrow_mut();
    if cache.variants(hash, key).is_empty() {
        return;
    }
    cache.remove(hash);
}

/// After a non-error answer to an unsafe (or unknown) method: the target
/// and the `Location` and `Content-Location` URLs of the same origin lose
/// what is stored for them (RFC 9111 §4.4), on whichever shard owns them.
fn invalidate(gateway: &Gateway, request: &ProxyRequest, fields: &CacheFields) {
    gateway.cache.borrow_mut().remove(request.hash);
    tell_nodes(gateway, Purge::Key { hash: request.hash, key: request.key.clone() });
    let host = request.field(b"host").map(<[u8]>::to_ascii_lowercase).unwrap_or_default();
    for location in [&fields.location, &fields.content_location].into_iter().flatten() {
        let Some(target) = same_origin_target(location, &host) else { continue };
        if target == request.target {
            continue;
        }
        let key = cache_key(b"http", &host, &target);
        let hash = key_hash(&key);
        tell_nodes(gateway, Purge::Key { hash, key: key.clone() });
        let core = gateway.core();
        let owner = shard_for_hash(hash, core.shard_count());
        if owner == core.id() {
            purge_key(gateway, hash, &key);
        } else if !core.notify(owner, Message::Purge { hash, key }) {
            core.metrics().shed();
        }
    }
}

/// The target a `Location` names when it is on `host` over http: a
/// path-absolute reference (`/x`), or `http://host/x` (RFC 9111 §4.4: only
/// the same origin). Relative references without a slash are skipped.
fn same_origin_target(location: &[u8], host: &[u8]) -> Option<Bytes> {
    let location = location.trim_ascii();
    if location.starts_with(b"/") && !location.starts_with(b"//") {
        return Some(Bytes::copy_from_slice(location));
    }
    let rest = location.get(..7).filter(|s| s.eq_ignore_ascii_case(b"http://")).map(|_| &location[7..])?;
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let same = authority.eq_ignore_ascii_case(host)
        || authority.strip_suffix(b":80").is_some_and(|a| a.eq_ignore_ascii_case(host))
        || host.strip_suffix(b":80").is_some_and(|h| h.eq_ignore_ascii_case(authority));
    if !same {
        return None;
    }
    Some(match path.first() {
        Some(b'/') => Bytes::copy_from_slice(path),
        _ => Bytes::from([&b"/"[..], path].concat()),
    })
}

#[cfg(test)]
mod tests;
