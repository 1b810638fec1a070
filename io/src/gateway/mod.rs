//! Gateway mode (docs/spec.md §7): a caching reverse proxy in front of origins.
//!
//! A request's cache key (host, path and query) names its owner shard, as a
//! key names it in the key-value API; a request that lands elsewhere is
//! forwarded there whole ([`crate::mesh::Message::Gateway`]). The owner
//! holds the key's stored responses ([`HttpCache`]), its in-flight origin
//! fetch ([`Flight`]) and talks to the origin, so coalescing and
//! invalidation need no coordination between cores.
//!
//! # The life of a GET
//! Fresh hit → `HIT`. Stale within stale-while-revalidate → `STALE` at once
//! and one background revalidation. Otherwise one fetch per key runs in its
//! own task (so a client hanging up does not cancel it) and every request
//! for the key waits for it: the first gets its answer (`MISS`,
//! `REVALIDATED`, or `STALE` under stale-if-error), the others look the
//! cache up again. An uncacheable answer marks the key hit-for-miss: later
//! requests go to the origin at once, in parallel, never queued one behind
//! another (the Varnish waiting-list pitfall).

mod flight;
mod state;
pub mod writes;
mod writes_queue;

use flight::{Flight, FlightWait, Shared, FLIGHTS_MAX};
use state::{bearer_matches, now_ms, send, Asker};
pub use state::{health_loop, start_admission, Gateway};

use std::rc::Rc;

use bytes::Bytes;
use shardgate_shards::httpcache::{self, HttpCache, Lookup, RequestFacts, ResponseFields, State, Variant};
use shardgate_shards::route::shard_for_hash;

use shardgate_http::codec::Method;
use shardgate_http::fields::{field_of, merge_fields};
use shardgate_http::origin::{CacheFields, OriginResponse};
pub use shardgate_http::proxy::{ProxyRequest, Validators};
use shardgate_http::response::{Extra, Proxied, Response};
use shardgate_shards::queued;

use crate::origin::OriginError;
use crate::runtime::metrics::CacheResult;

/// `Allow` of a refused CONNECT or TRACE: what the gateway relays.
const GATEWAY_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, PURGE";

/// Where asynchronous writes report their state: `/_writes/{id}`.
pub const WRITES_PREFIX: &[u8] = b"/_writes/";

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
        && !request.carries_cookie();
    if !fetchable {
        return None;
    }
    let now = now_ms();
    let lookup = gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name));
    let Lookup::Hit { variant, state: State::Fresh } = lookup else {
        return None;
    };
    gateway.core.metrics().gateway_result(CacheResult::Hit);
    Some(serve_hit(request, &variant, now, CacheResult::Hit))
}

/// Serves one gateway request on its owner core.
pub async fn handle(gateway: Rc<Gateway>, request: ProxyRequest) -> Response {
    let request = Rc::new(request);
    let (response, result) = match request.method {
        Method::Purge => purge(&gateway, &request),
        // A tunnel or a reflected trace is no business of an API gateway.
        Method::Other if matches!(&request.method_token[..], b"CONNECT" | b"TRACE") => {
            let response = Response::problem(405, "CONNECT and TRACE are not proxied");
            (Response { extra: Extra::Allow(&GATEWAY_ALLOW), ..response }, CacheResult::Bypass)
        }
        Method::Get if request.target.starts_with(WRITES_PREFIX) => {
            (writes::status(&gateway, &request, &request.target[WRITES_PREFIX.len()..]).await, CacheResult::Bypass)
        }
        // A request with a cookie is one client's: passed, never stored or
        // served from the cache (Varnish's builtin VCL does the same).
        Method::Get | Method::Head if request.carries_cookie() => pass(&gateway, &request).await,
        Method::Get | Method::Head => cached(&gateway, &request).await,
        _ if request.is_unsafe() && (gateway.config.async_writes || request.prefers_async()) => {
            (writes::accept(&gateway, &request).await, CacheResult::Bypass)
        }
        _ => pass(&gateway, &request).await,
    };
    let metrics = gateway.core.metrics();
    metrics.gateway_result(result);
    let cache = gateway.cache.borrow();
    metrics.gateway_cache(cache.bytes(), cache.objects());
    response
}

/// `PURGE`: drops every stored variant of the key, with the admin token.
fn purge(gateway: &Gateway, request: &ProxyRequest) -> (Response, CacheResult) {
    let token = gateway.config.admin_token.as_ref().map(|t| t.expose());
    let response = match (request.field(b"authorization"), token) {
        (None, _) => Response::problem(401, "PURGE needs Authorization: Bearer <admin token>"),
        (Some(_), None) => Response::problem(403, "PURGE is disabled: no --admin-token is set"),
        (Some(given), Some(token)) if !bearer_matches(given, token) => Response::problem(403, "wrong admin token"),
        _ if gateway.cache.borrow_mut().remove(request.hash) => Response::text(200, "purged\n"),
        _ => Response::problem(404, "nothing stored under this key"),
    };
    (response, CacheResult::Bypass)
}

/// Relays a stored variant with its `Age` and `X-Cache`.
fn serve_variant(variant: &Variant, now_ms: u64, result: CacheResult) -> Response {
    let age_s = variant.freshness.age_ms(now_ms) / 1000;
    relay(variant.status, &variant.reason, &variant.headers, variant.body.clone(), Some(age_s), result)
}

fn relay(
    status: u16,
    reason: &Bytes,
    headers: &Bytes,
    body: Bytes,
    age_s: Option<u64>,
    result: CacheResult,
) -> Response {
    let proxied = Proxied { reason: reason.clone(), headers: headers.clone(), age_s, x_cache: Some(result.name()) };
    Response { status, body, extra: Extra::Proxied(Box::new(proxied)), ..Response::default() }
}

fn relay_origin(response: &OriginResponse, result: CacheResult) -> Response {
    let age_s = response.fields.age.as_deref().and_then(|a| std::str::from_utf8(a).ok()?.parse().ok());
    relay(response.status, &response.reason, &response.headers, response.body.clone(), age_s, result)
}

/// An error response marked with its `X-Cache`.
fn error_response(error: Response, result: CacheResult) -> Response {
    let reason = Bytes::from_static(shardgate_http::response::reason(error.status).as_bytes());
    let proxied = Proxied { reason, headers: Bytes::new(), age_s: None, x_cache: Some(result.name()) };
    Response { extra: Extra::Proxied(Box::new(proxied)), ..error }
}

/// The client's `If-None-Match` matches the stored entity tag (weak
/// comparison, RFC 9110 §13.1.2): answer 304 from the cache.
fn not_modified(request: &ProxyRequest, variant: &Variant) -> bool {
    let (Some(tags), Some(etag)) = (request.field(b"if-none-match"), variant.etag.as_deref()) else {
        return false;
    };
    let weak = |tag: &[u8]| tag.strip_prefix(b"W/").unwrap_or(tag).to_vec();
    let stored = weak(etag);
    variant.status == 200
        && tags.split(|&b| b == b',').any(|t| t.trim_ascii() == b"*" || weak(t.trim_ascii()) == stored)
}

fn serve_hit(request: &ProxyRequest, variant: &Variant, now_ms: u64, result: CacheResult) -> Response {
    let mut response = serve_variant(variant, now_ms, result);
    if not_modified(request, variant) {
        response.status = 304;
        response.body = Bytes::new();
        if let Extra::Proxied(proxied) = &mut response.extra {
            proxied.reason = Bytes::from_static(b"Not Modified");
        }
    }
    response
}

/// Starts the fetch of `request`'s key unless one runs. Returns the flight
/// and whether this call started it.
fn join_flight(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    stale: Option<Rc<Variant>>,
) -> Result<(Rc<Flight>, bool), Response> {
    if let Some(flight) = gateway.flights.borrow().get(&request.hash) {
        return Ok((Rc::clone(flight), false));
    }
    if gateway.flights.borrow().len() >= FLIGHTS_MAX {
        gateway.core.metrics().shed();
        return Err(Response::overloaded("too many origin fetches in progress on this shard"));
    }
    let flight = Rc::new(Flight::new());
    gateway.flights.borrow_mut().insert(request.hash, Rc::clone(&flight));
    let (gateway, request, task_flight) = (Rc::clone(gateway), Rc::clone(request), Rc::clone(&flight));
    monoio::spawn(async move {
        let done = fill(&gateway, &request, stale).await;
        gateway.flights.borrow_mut().remove(&request.hash);
        *task_flight.done.borrow_mut() = Some(done);
        for waker in task_flight.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    });
    Ok((flight, true))
}

/// GET and HEAD: from the cache, or through one coalesced fetch.
async fn cached(gateway: &Rc<Gateway>, request: &Rc<ProxyRequest>) -> (Response, CacheResult) {
    let mut waited = false;
    loop {
        let now = now_ms();
        let lookup =
            gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name));
        let stale = match lookup {
            Lookup::Hit { variant, state: State::Fresh } => {
                return (serve_hit(request, &variant, now, CacheResult::Hit), CacheResult::Hit);
            }
            Lookup::Hit { variant, state: State::Stale { revalidate_in_background: true, .. } } => {
                // Past the fetch bound the stale copy is served all the
                // same; a later request revalidates it.
                let _ = join_flight(gateway, request, Some(Rc::clone(&variant)));
                return (serve_hit(request, &variant, now, CacheResult::Stale), CacheResult::Stale);
            }
            Lookup::HitForMiss => return pass(gateway, request).await,
            // After a flight, a key still missing goes straight to the origin.
            Lookup::Miss if waited => return pass(gateway, request).await,
            Lookup::Hit { variant, .. } => Some(variant),
            Lookup::Miss => None,
        };
        let (flight, first) = match join_flight(gateway, request, stale) {
            Ok(joined) => joined,
            Err(overloaded) => return (overloaded, CacheResult::Miss),
        };
        if first {
            let (response, result, _) = FlightWait { flight }.await;
            return (response, result);
        }
        let Some(_waiting) = flight.wait() else {
            gateway.core.metrics().shed();
            return (Response::overloaded("too many requests wait for this key's origin fetch"), CacheResult::Miss);
        };
        // Waiters wait at most --origin-timeout (docs/spec.md §7), whatever the fetch does.
        let Ok((_, _, shared)) = monoio::time::timeout(gateway.config.timeout, FlightWait { flight }).await else {
            let error = OriginError::Timeout.response();
            return (error_response(error, CacheResult::Miss), CacheResult::Miss);
        };
        match shared {
            Shared::Lookup if !waited => waited = true,
            Shared::Lookup => return pass(gateway, request).await,
            Shared::Failed(error) => return stale_or(gateway, request, error),
            Shared::Answered => {
                if let Some(stale) = stale_copy(gateway, request) {
                    return stale;
                }
                return pass(gateway, request).await;
            }
        }
    }
}

/// Under stale-if-error, the stale copy; else the error.
fn stale_or(gateway: &Gateway, request: &ProxyRequest, error: Response) -> (Response, CacheResult) {
    stale_copy(gateway, request).unwrap_or((error, CacheResult::Miss))
}

/// A stored copy stale-if-error allows serving now (or a fresh one).
fn stale_copy(gateway: &Gateway, request: &ProxyRequest) -> Option<(Response, CacheResult)> {
    let now = now_ms();
    match gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name)) {
        Lookup::Hit { variant, state: State::Fresh | State::Stale { on_error: true, .. } } => {
            Some((serve_hit(request, &variant, now, CacheResult::Stale), CacheResult::Stale))
        }
        _ => None,
    }
}

/// A client's request: its identity takes its share of the origin's queue.
fn asker(gateway: &Gateway, request: &ProxyRequest) -> Asker {
    Asker { identity: gateway.identity(request).unwrap_or(0), retry: false, wait: true }
}

fn request_facts(request: &ProxyRequest) -> RequestFacts {
    RequestFacts { cacheable_method: true, has_authorization: request.field(b"authorization").is_some() }
}

fn response_fields(response: &OriginResponse) -> ResponseFields<'_> {
    let fields = &response.fields;
    ResponseFields {
        status: response.status,
        cache_control: fields.cache_control.as_deref(),
        expires: fields.expires.as_deref(),
        date: fields.date.as_deref(),
        age: fields.age.as_deref(),
        vary: fields.vary.as_deref(),
        has_validator: fields.etag.is_some() || fields.last_modified.is_some(),
        sets_cookie: fields.set_cookie,
    }
}

/// Stores a response when RFC 9111 allows; else marks the key hit-for-miss.
/// Returns the age (seconds) to relay it with.
fn store(gateway: &Gateway, request: &ProxyRequest, response: &OriginResponse, request_ms: u64) -> Option<u64> {
    let response_ms = now_ms();
    let fields = response_fields(response);
    let freshness = httpcache::storable(
        request_facts(request),
        &fields,
        request_ms,
        response_ms,
        gateway.config.default_ttl.as_millis() as u64,
    );
    let vary = fields.vary.map_or(Ok(Vec::new()), httpcache::vary_names);
    let mut cache = gateway.cache.borrow_mut();
    let (Ok(freshness), Ok(vary)) = (freshness, vary) else {
        cache.remove(request.hash);
        cache.mark_hit_for_miss(response_ms, request.hash);
        return None;
    };
    let variant = Variant {
        vary_values: HttpCache::vary_values(&vary, |name| request.field_value(name)),
        status: response.status,
        reason: response.reason.clone(),
        headers: response.headers.clone(),
        body: response.body.clone(),
        etag: response.fields.etag.clone(),
        last_modified: response.fields.last_modified.clone(),
        freshness,
    };
    cache.store(request.hash, request.key.clone(), vary, variant);
    Some(freshness.initial_age_ms / 1000)
}

/// One fetch for the cache: a miss, or a revalidation of `stale`. Returns
/// the first requester's answer and what the waiters share.
async fn fill(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    stale: Option<Rc<Variant>>,
) -> (Response, CacheResult, Shared) {
    let validators =
        stale.as_ref().map(|v| Validators { etag: v.etag.clone(), last_modified: v.last_modified.clone() });
    let request_ms = now_ms();
    // Holding a copy stale-if-error allows, a revalidation does not queue
    // for a slot: an origin at its limit counts as an error, and the stale
    // copy is served at once (nginx's `proxy_cache_use_stale updating`
    // within what the origin allowed).
    let may_serve_stale =
        stale.as_ref().is_some_and(|v| matches!(v.freshness.state(request_ms), State::Stale { on_error: true, .. }));
    let asker = Asker { wait: !may_serve_stale, ..asker(gateway, request) };
    let result = send(
        gateway,
        |host| request.encode_for_origin(host, Some(&validators.clone().unwrap_or_default())),
        true,
        true,
        asker,
    )
    .await;
    let now = now_ms();
    let stale_on_error =
        stale.as_ref().filter(|v| matches!(v.freshness.state(now), State::Stale { on_error: true, .. }));
    match result {
        Err(error) => {
            let error = error_response(error.response(), CacheResult::Miss);
            match stale_on_error {
                Some(variant) => {
                    (serve_hit(request, variant, now, CacheResult::Stale), CacheResult::Stale, Shared::Failed(error))
                }
                None => (error.clone(), CacheResult::Miss, Shared::Failed(error)),
            }
        }
        Ok(response) if response.status >= 500 => match stale_on_error {
            Some(variant) => {
                (serve_hit(request, variant, now, CacheResult::Stale), CacheResult::Stale, Shared::Answered)
            }
            None => (relay_origin(&response, CacheResult::Miss), CacheResult::Miss, Shared::Answered),
        },
        Ok(response) if response.status == 304 && stale.is_some() => {
            let variant = stale.expect("checked");
            match revalidated(gateway, request, &variant, &response, request_ms) {
                Some(fresh) => (
                    serve_hit(request, &fresh, now, CacheResult::Revalidated),
                    CacheResult::Revalidated,
                    Shared::Lookup,
                ),
                None => (
                    serve_hit(request, &variant, now, CacheResult::Revalidated),
                    CacheResult::Revalidated,
                    Shared::Lookup,
                ),
            }
        }
        Ok(response) => {
            // A stored response carries its computed age; a relayed one keeps the origin's.
            let relayed = match store(gateway, request, &response, request_ms) {
                Some(age_s) => {
                    let OriginResponse { status, reason, headers, body, .. } = &response;
                    relay(*status, reason, headers, body.clone(), Some(age_s), CacheResult::Miss)
                }
                None => relay_origin(&response, CacheResult::Miss),
            };
            (relayed, CacheResult::Miss, Shared::Lookup)
        }
    }
}

/// A 304 for a stored variant: its freshness is recomputed from the merged
/// fields and the 304's fields replace the stored ones (RFC 9111 §4.3.4).
fn revalidated(
    gateway: &Gateway,
    request: &ProxyRequest,
    variant: &Variant,
    response: &OriginResponse,
    request_ms: u64,
) -> Option<Rc<Variant>> {
    let headers = merge_fields(&variant.headers, &response.headers);
    let merged = OriginResponse {
        status: variant.status,
        reason: variant.reason.clone(),
        headers: headers.clone(),
        body: variant.body.clone(),
        fields: CacheFields {
            cache_control: field_of(&headers, b"cache-control").map(Bytes::copy_from_slice),
            expires: field_of(&headers, b"expires").map(Bytes::copy_from_slice),
            date: response.fields.date.clone(),
            age: response.fields.age.clone(),
            vary: field_of(&headers, b"vary").map(Bytes::copy_from_slice),
            etag: field_of(&headers, b"etag").map(Bytes::copy_from_slice),
            last_modified: field_of(&headers, b"last-modified").map(Bytes::copy_from_slice),
            set_cookie: field_of(&headers, b"set-cookie").is_some(),
        },
    };
    let fields = response_fields(&merged);
    let freshness = httpcache::storable(
        request_facts(request),
        &fields,
        request_ms,
        now_ms(),
        gateway.config.default_ttl.as_millis() as u64,
    );
    let mut cache = gateway.cache.borrow_mut();
    match freshness {
        Ok(freshness) => cache.refresh(request.hash, &request.key, &variant.vary_values, freshness, Some(headers)),
        Err(_) => {
            cache.remove(request.hash);
            None
        }
    }
}

/// Straight to the origin (unsafe methods, hit-for-miss, other methods):
/// `BYPASS` for methods the cache never stores, `MISS` for GET and HEAD
/// (whose answer is stored if it became cacheable). A non-error answer to
/// an unsafe method invalidates the key (RFC 9111 §4.4).
async fn pass(gateway: &Rc<Gateway>, request: &Rc<ProxyRequest>) -> (Response, CacheResult) {
    let cacheable = matches!(request.method, Method::Get | Method::Head) && !request.carries_cookie();
    let result = if cacheable { CacheResult::Miss } else { CacheResult::Bypass };
    let idempotent = !matches!(request.method, Method::Post | Method::Patch);
    let request_ms = now_ms();
    let asker = asker(gateway, request);
    let sent = if cacheable {
        send(gateway, |host| request.encode_for_origin(host, Some(&Validators::default())), true, true, asker).await
    } else {
        let expect_body = request.method != Method::Head;
        send(gateway, |host| request.encode_for_origin(host, None), expect_body, idempotent, asker).await
    };
    let response = match sent {
        Err(error) => return (error_response(error.response(), result), result),
        Ok(response) => response,
    };
    if cacheable && response.status < 500 {
        store(gateway, request, &response, request_ms);
    }
    if request.is_unsafe() && response.status < 400 {
        gateway.cache.borrow_mut().remove(request.hash);
    }
    (relay_origin(&response, result), result)
}

#[cfg(test)]
mod tests;
