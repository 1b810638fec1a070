//! Going to the origin for the cache: one coalesced fetch per key
//! ([`cached`] and its [`Flight`]), revalidations, passes, and what happens
//! to an answer on its way back: stored when RFC 9111 allows, streamed to
//! its readers while it arrives, passed through unstored when it is larger
//! than `--cache-object-max`.

use std::rc::Rc;

use bytes::Bytes;
use shardgate_http::body::{self, BodyWriter};
use shardgate_http::codec::Method;
use shardgate_http::fields::{merge_fields, without_fields};
use shardgate_http::origin::{CacheFields, OriginResponse};
use shardgate_http::proxy::{ProxyRequest, StreamedRequestBody, Validators};
use shardgate_http::response::{Forward, Response};
use shardgate_shards::httpcache::tags::response_tags;
use shardgate_shards::httpcache::{
    self, Heuristics, HttpCache, Lookup, NotStored, RequestFacts, ResponseFields, State, Stored, Variant,
};
use shardgate_shards::pieces::Pieces;

use super::flight::{First, Flight, FlightWait, Settled, Shared, FLIGHTS_MAX};
use super::serve::{self, annotate, error_response, forward_status, hit_status, origin_response, present, Facts};
use super::state::{now_ms, send, Asker, Gateway, Sent};
use crate::origin::{BodySource, OriginError, StreamedBody};
use crate::runtime::metrics::CacheResult;

/// Body bytes a response passing through (not stored) may have buffered
/// ahead of its slowest reader: what bounds an exchange's memory, whatever
/// the body's size.
pub const STREAM_WINDOW_BYTES: usize = 1 << 20;

/// Fields never served: addressed to this cache (`Shardgate-Cache-Control`)
/// or its purges (`Surrogate-Key`, `Cache-Tag`, as Fastly strips them).
const CACHE_ONLY_FIELDS: [&[u8]; 3] = [b"shardgate-cache-control", b"surrogate-key", b"cache-tag"];

/// A client's request: its identity takes its share of the origin's queue.
fn asker(gateway: &Gateway, request: &ProxyRequest) -> Asker {
    Asker { identity: gateway.identity(request).unwrap_or(0), retry: false, wait: true }
}

/// The cache key for `Cache-Status`, when `--cache-status-key` asks for it.
fn status_key<'a>(gateway: &Gateway, request: &'a ProxyRequest) -> Option<&'a Bytes> {
    gateway.config.cache.status_key.then_some(&request.key)
}

/// A fresh or stale stored variant, as the client asked for it.
pub(super) fn serve_stored(
    gateway: &Gateway,
    request: &ProxyRequest,
    variant: &Variant,
    now_ms: u64,
    result: CacheResult,
) -> Response {
    let status = hit_status(variant.freshness.ttl_s(now_ms));
    let mut response = serve::variant_response(variant, now_ms, result, status);
    annotate(&mut response, status_key(gateway, request), false);
    present(request, response, || Facts::of_variant(variant))
}

/// Starts the fetch of `request`'s key unless one runs. Returns the flight
/// and whether this call started it.
fn join_flight(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    stale: Option<Rc<Variant>>,
    fwd: Forward,
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
        fill(&gateway, &request, stale, fwd, &task_flight).await;
        leave(&gateway, &request, &task_flight);
        if !task_flight.settled() {
            let error = Response::problem(502, "the origin fetch ended without an answer");
            let first = First { response: error.clone(), result: CacheResult::Miss, facts: Facts::default() };
            task_flight.settle(first, Shared::Failed(error));
        }
    });
    Ok((flight, true))
}

/// Takes `flight` out of the key's place, if it is still there.
fn leave(gateway: &Gateway, request: &ProxyRequest, flight: &Rc<Flight>) {
    let mut flights = gateway.flights.borrow_mut();
    if flights.get(&request.hash).is_some_and(|f| Rc::ptr_eq(f, flight)) {
        flights.remove(&request.hash);
    }
}

/// GET and HEAD: from the cache, or through one coalesced fetch.
pub(super) async fn cached(gateway: &Rc<Gateway>, request: &Rc<ProxyRequest>) -> (Response, CacheResult) {
    let mut waited = false;
    loop {
        let now = now_ms();
        let lookup =
            gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name));
        let (stale, fwd) = match lookup {
            // The client asked for a revalidation: one, coalesced, whatever it finds.
            Lookup::Hit { variant, state: State::Fresh } if request.forbids_stored() && !waited => {
                (Some(variant), Forward::Request)
            }
            Lookup::Hit { variant, state: State::Fresh } => {
                let mut response = serve_stored(gateway, request, &variant, now, CacheResult::Hit);
                annotate(&mut response, None, waited);
                return (response, CacheResult::Hit);
            }
            Lookup::Hit { variant, state: State::Stale { revalidate_in_background: true, .. } } => {
                // Past the fetch bound the stale copy is served all the
                // same; a later request revalidates it.
                let _ = join_flight(gateway, request, Some(Rc::clone(&variant)), Forward::Stale);
                return (serve_stored(gateway, request, &variant, now, CacheResult::Stale), CacheResult::Stale);
            }
            Lookup::HitForMiss => return pass(gateway, request, Forward::Bypass, None).await,
            // After a flight, a key still missing goes straight to the origin.
            Lookup::Miss | Lookup::VaryMiss if waited => return pass(gateway, request, Forward::UriMiss, None).await,
            Lookup::Hit { variant, .. } => (Some(variant), Forward::Stale),
            Lookup::Miss => (None, Forward::UriMiss),
            Lookup::VaryMiss => (None, Forward::VaryMiss),
        };
        let (flight, first) = match join_flight(gateway, request, stale, fwd) {
            Ok(joined) => joined,
            Err(overloaded) => return (overloaded, CacheResult::Miss),
        };
        if first {
            return match (FlightWait { flight, first: true }).await {
                Settled::First(First { response, result, facts }) => (present(request, response, || facts), result),
                Settled::Shared(_) => unreachable!("the first requester takes its own answer"),
            };
        }
        let Some(_waiting) = flight.wait() else {
            gateway.core.metrics().shed();
            return (Response::overloaded("too many requests wait for this key's origin fetch"), CacheResult::Miss);
        };
        // Waiters wait at most --origin-timeout (docs/spec.md §7), whatever the fetch does.
        let wait = FlightWait { flight, first: false };
        let Ok(Settled::Shared(shared)) = monoio::time::timeout(gateway.config.timeout, wait).await else {
            let error = OriginError::Timeout.response();
            return (error_response(error, CacheResult::Miss, forward_status(fwd, None, None)), CacheResult::Miss);
        };
        match shared {
            Shared::Lookup if !waited => waited = true,
            Shared::Lookup => return pass(gateway, request, fwd, None).await,
            Shared::Stream(mut response, facts) => {
                annotate(&mut response, None, true);
                return (present(request, response, || facts), CacheResult::Miss);
            }
            Shared::Failed(mut error) => {
                annotate(&mut error, None, true);
                return stale_or(gateway, request, error);
            }
            Shared::Answered => {
                if let Some(stale) = stale_copy(gateway, request, None) {
                    return stale;
                }
                return pass(gateway, request, fwd, None).await;
            }
        }
    }
}

/// Under stale-if-error, the stale copy; else the error.
fn stale_or(gateway: &Gateway, request: &ProxyRequest, error: Response) -> (Response, CacheResult) {
    stale_copy(gateway, request, Some(error.status)).unwrap_or((error, CacheResult::Miss))
}

/// A stored copy stale-if-error allows serving now (or a fresh one), after
/// the origin failed (`fwd_status`: its answer, when it gave one).
fn stale_copy(gateway: &Gateway, request: &ProxyRequest, fwd_status: Option<u16>) -> Option<(Response, CacheResult)> {
    let now = now_ms();
    match gateway.cache.borrow_mut().lookup(now, request.hash, &request.key, |name| request.field_value(name)) {
        Lookup::Hit { variant, state: State::Fresh | State::Stale { on_error: true, .. } } => {
            Some((stale_response(gateway, request, &variant, now, fwd_status), CacheResult::Stale))
        }
        _ => None,
    }
}

/// A stale copy served instead of an origin error.
fn stale_response(
    gateway: &Gateway,
    request: &ProxyRequest,
    variant: &Variant,
    now_ms: u64,
    fwd_status: Option<u16>,
) -> Response {
    let mut status = hit_status(variant.freshness.ttl_s(now_ms));
    status.hit = false;
    status.fwd = Some(Forward::Stale);
    status.fwd_status = fwd_status;
    let mut response = serve::variant_response(variant, now_ms, CacheResult::Stale, status);
    annotate(&mut response, status_key(gateway, request), false);
    present(request, response, || Facts::of_variant(variant))
}

fn request_facts(request: &ProxyRequest) -> RequestFacts {
    RequestFacts { cacheable_method: true, has_authorization: request.field(b"authorization").is_some() }
}

fn response_fields(status: u16, fields: &CacheFields) -> ResponseFields<'_> {
    ResponseFields {
        status,
        cache_control: fields.cache_control.as_deref(),
        cdn_cache_control: fields.cdn_cache_control.as_deref(),
        shardgate_cache_control: fields.shardgate_cache_control.as_deref(),
        expires: fields.expires.as_deref(),
        date: fields.date.as_deref(),
        age: fields.age.as_deref(),
        vary: fields.vary.as_deref(),
        last_modified: fields.last_modified.as_deref(),
        has_validator: fields.etag.is_some() || fields.last_modified.is_some(),
        sets_cookie: fields.set_cookie,
    }
}

fn heuristics(gateway: &Gateway) -> Heuristics {
    Heuristics {
        default_ttl_ms: gateway.config.default_ttl.as_millis() as u64,
        last_modified_percent: gateway.config.cache.heuristic_percent,
    }
}

/// An answer the cache may store: its freshness, the fields it keeps out,
/// its `Vary` names and its surrogate keys.
struct Storing {
    stored: Stored,
    vary: Vec<Bytes>,
    tags: Vec<Bytes>,
}

/// Whether RFC 9111 lets `response` be stored for `request`.
fn storing(
    gateway: &Gateway,
    request: &ProxyRequest,
    response: &OriginResponse,
    request_ms: u64,
) -> Result<Storing, NotStored> {
    let fields = response_fields(response.status, &response.fields);
    let stored = httpcache::storable(request_facts(request), &fields, request_ms, now_ms(), heuristics(gateway))?;
    let vary = fields.vary.map_or(Ok(Vec::new()), httpcache::vary_names)?;
    let tags = response_tags(response.fields.surrogate_key.as_deref(), response.fields.cache_tag.as_deref());
    Ok(Storing { stored, vary, tags })
}

/// Stores `response` with `body`. Returns false when the cache refused it
/// (over its budget, or its tags over the index's).
fn commit(
    gateway: &Gateway,
    request: &ProxyRequest,
    response: &OriginResponse,
    storing: Storing,
    body: Pieces,
) -> bool {
    let Storing { stored, vary, tags } = storing;
    let mut dropped: Vec<&[u8]> = CACHE_ONLY_FIELDS.to_vec();
    dropped.extend(stored.strip.iter().map(|name| &name[..]));
    let variant = Variant {
        vary_values: HttpCache::vary_values(
            &vary,
            |name| request.field_value(name),
            response.fields.content_encoding.as_deref(),
        ),
        status: response.status,
        reason: response.reason.clone(),
        headers: without_fields(&response.headers, &dropped),
        body,
        etag: response.fields.etag.clone(),
        last_modified: response.fields.last_modified.clone(),
        date: serve::origin_date(response),
        freshness: stored.freshness,
    };
    gateway.cache.borrow_mut().store(request.hash, request.key.clone(), vary, variant, tags)
}

/// Marks the key hit-for-miss: its next requests go to the origin in
/// parallel instead of queueing behind one fetch.
fn not_stored(gateway: &Gateway, request: &ProxyRequest) {
    let mut cache = gateway.cache.borrow_mut();
    cache.remove(request.hash);
    cache.mark_hit_for_miss(now_ms(), request.hash);
}

/// One fetch for the cache: a miss, or a revalidation of `stale`. Settles
/// `flight` once the answer's head is in; a body still arriving is then
/// read here to its end, stored when it may be.
async fn fill(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    stale: Option<Rc<Variant>>,
    fwd: Forward,
    flight: &Rc<Flight>,
) {
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
    let encode = |host: &[u8]| request.encode_for_origin(host, Some(&validators.clone().unwrap_or_default()));
    let sent = send(gateway, encode, None, true, true, asker).await;
    let now = now_ms();
    let stale_on_error =
        stale.as_ref().filter(|v| matches!(v.freshness.state(now), State::Stale { on_error: true, .. }));
    let settle_failed = |error: Response, fwd_status: Option<u16>, shared: Shared| {
        let first = match stale_on_error {
            Some(variant) => First {
                response: stale_response(gateway, request, variant, now, fwd_status),
                result: CacheResult::Stale,
                facts: Facts::of_variant(variant),
            },
            None => First { response: error, result: CacheResult::Miss, facts: Facts::default() },
        };
        flight.settle(first, shared);
    };
    let Sent { exchanged, origin, origin_us } = match sent {
        Err(error) => {
            let error = error_response(error.response(), CacheResult::Miss, forward_status(fwd, None, None));
            settle_failed(error.clone(), None, Shared::Failed(error));
            return;
        }
        Ok(sent) => sent,
    };
    let status = exchanged.response.status;
    if status >= 500 && stale_on_error.is_some() {
        settle_failed(Response::default(), Some(status), Shared::Answered);
        return;
    }
    if status == 304 {
        if let Some(variant) = &stale {
            let fresh = revalidated(gateway, request, variant, &exchanged.response, request_ms);
            let served = fresh.as_deref().unwrap_or(variant);
            let ttl = fresh.as_ref().map(|v| v.freshness.ttl_s(now));
            let cache_status = forward_status(fwd, Some(304), ttl);
            let mut response = serve::variant_response(served, now, CacheResult::Revalidated, cache_status);
            annotate(&mut response, status_key(gateway, request), false);
            set_origin_us(&mut response, origin_us);
            let first = First { response, result: CacheResult::Revalidated, facts: Facts::of_variant(served) };
            flight.settle(first, Shared::Lookup);
            return;
        }
    }
    let storable = if status < 500 { storing(gateway, request, &exchanged.response, request_ms).ok() } else { None };
    let answer = Answer { sent: Sent { exchanged, origin, origin_us }, storing: storable, mark: status < 500, fwd };
    let shared_stream = |response: &Response, facts: &Facts| Shared::Stream(response.clone(), facts.clone());
    let on_release = || {
        // Too large to store after all: later waiters go to the origin
        // themselves, and the key passes from now on.
        flight.reshare(Shared::Answered);
        leave(gateway, request, flight);
    };
    relay_answer(
        gateway,
        request,
        answer,
        Some((&|first, shared| flight.settle(first, shared), &shared_stream)),
        &on_release,
    )
    .await;
}

fn set_origin_us(response: &mut Response, origin_us: u32) {
    if let shardgate_http::response::Extra::Proxied(proxied) = &mut response.extra {
        proxied.origin_us = Some(origin_us);
    }
}

/// An origin's answer and what the cache may do with it.
struct Answer {
    sent: Sent,
    /// Storable under RFC 9111 (None: not stored).
    storing: Option<Storing>,
    /// Not storing it marks the key hit-for-miss (an answer the cache may
    /// not keep, as opposed to a server error or a passed-through range).
    mark: bool,
    fwd: Forward,
}

/// How the first requester and the waiters of a flight are told.
type Settle<'a> = (&'a dyn Fn(First, Shared), &'a dyn Fn(&Response, &Facts) -> Shared);

/// Hands an answer on: stores a whole body at once (when allowed), or
/// streams a body still arriving to its reader(s) and stores it once all of
/// it has come, if it stays within `--cache-object-max`; an answer that is
/// not stored marks the key hit-for-miss when `mark` says so. With `settle`
/// (a flight), the first requester and the waiters are told as soon as the
/// head is in, and a body is read here to its end (`on_release` runs if a
/// body being stored turns out too large); without, the first requester's
/// answer is returned and a body is read by a task of its own.
async fn relay_answer(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    answer: Answer,
    settle: Option<Settle<'_>>,
    on_release: &dyn Fn(),
) -> Option<(Response, Facts)> {
    let Answer { sent: Sent { exchanged, origin, origin_us }, storing, mark, fwd } = answer;
    let length = exchanged.length();
    let response = exchanged.response;
    let fits = length.is_none_or(|length| length <= gateway.config.cache.object_bytes_max);
    let keep = storing.is_some() && fits;
    let storing = storing.filter(|_| keep);
    let age_s = match &storing {
        Some(s) => Some(s.stored.freshness.initial_age_ms / 1000),
        None => response.fields.age.as_deref().and_then(httpcache::parse_age),
    };
    let ttl = storing.as_ref().map(|s| s.stored.freshness.ttl_s(now_ms()));
    let shown = OriginResponse { headers: without_fields(&response.headers, &CACHE_ONLY_FIELDS), ..response.clone() };
    let facts = Facts::of_origin(&response, length);
    let Some(rest) = exchanged.rest else {
        // The whole body is here.
        let stored = match storing {
            Some(storing) => commit(gateway, request, &response, storing, Pieces::one(response.body.clone())),
            None => false,
        };
        if !stored && mark {
            not_stored(gateway, request);
        }
        let cache_status = forward_status(fwd, Some(response.status), ttl.filter(|_| stored));
        let mut relayed = origin_response(&shown, age_s, CacheResult::Miss, cache_status, None);
        annotate(&mut relayed, status_key(gateway, request), false);
        set_origin_us(&mut relayed, origin_us);
        let Some((settle, _)) = settle else {
            return Some((relayed, facts));
        };
        let shared = if response.status >= 500 { Shared::Answered } else { Shared::Lookup };
        settle(First { response: relayed, result: CacheResult::Miss, facts }, shared);
        return None;
    };
    // A body still arriving: stored while it streams if it may be.
    let (writer, reader) = body::channel(keep, STREAM_WINDOW_BYTES, length);
    writer.push(response.body.clone());
    // `stored` is said only of a body known to fit: one of unknown length
    // may still turn out too large while it streams.
    let cache_status = forward_status(fwd, Some(response.status), ttl.filter(|_| length.is_some()));
    let mut relayed = origin_response(&shown, age_s, CacheResult::Miss, cache_status, Some((reader, length)));
    annotate(&mut relayed, status_key(gateway, request), false);
    set_origin_us(&mut relayed, origin_us);
    if !keep && mark {
        not_stored(gateway, request);
    }
    let head = OriginResponse { body: Bytes::new(), ..response };
    let pump = Pump { source: rest, writer, origin, keep, storing, head };
    let Some((settle, share)) = settle else {
        let (gateway, request) = (Rc::clone(gateway), Rc::clone(request));
        monoio::spawn(async move { pump.run(&gateway, &request, &|| {}).await });
        return Some((relayed, facts));
    };
    let shared = match keep {
        true => share(&relayed, &facts),
        false => {
            on_release();
            Shared::Answered
        }
    };
    settle(First { response: relayed, result: CacheResult::Miss, facts }, shared);
    pump.run(gateway, request, on_release).await;
    None
}

/// The rest of a body, read from the origin into its stream.
struct Pump {
    source: BodySource,
    writer: BodyWriter,
    origin: usize,
    /// Every chunk is kept, to be stored at the end.
    keep: bool,
    storing: Option<Storing>,
    head: OriginResponse,
}

impl Pump {
    /// Reads the body to its end: waits for room while windowed, stops
    /// when every reader of a windowed body has gone, turns a kept body
    /// into a windowed one past `--cache-object-max`, stores a kept body
    /// at its end. The origin connection goes back to the pool only when
    /// the body was read whole.
    async fn run(mut self, gateway: &Gateway, request: &ProxyRequest, on_release: &dyn Fn()) {
        let limits = gateway.limits();
        let object_max = gateway.config.cache.object_bytes_max;
        loop {
            if self.writer.room().await.is_err() {
                return; // Nobody reads any more: drop the origin connection.
            }
            match self.source.next(limits.timeout).await {
                Ok(Some(chunk)) => {
                    self.writer.push(chunk);
                    if self.keep && self.writer.pushed_bytes() > object_max {
                        self.keep = false;
                        self.storing = None;
                        self.writer.release();
                        not_stored(gateway, request);
                        on_release();
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.writer.abort();
                    return;
                }
            }
        }
        if let (Some(storing), Some(chunks)) = (self.storing.take(), self.writer.chunks()) {
            commit(gateway, request, &self.head, storing, Pieces::from_vec(chunks));
        }
        self.writer.finish();
        self.source.finish(&gateway.origins[self.origin], limits.pool_connections_max);
    }
}

/// A 304 for a stored variant: its freshness is recomputed from the merged
/// fields and the 304's fields replace the stored ones, its `Date` too
/// (RFC 9111 §3.2, §4.3.4).
fn revalidated(
    gateway: &Gateway,
    request: &ProxyRequest,
    variant: &Variant,
    response: &OriginResponse,
    request_ms: u64,
) -> Option<Rc<Variant>> {
    let headers = without_fields(&merge_fields(&variant.headers, &response.headers), &CACHE_ONLY_FIELDS);
    refresh_with(
        gateway,
        request,
        variant,
        headers,
        response.fields.date.clone(),
        response.fields.age.clone(),
        request_ms,
    )
}

/// Refreshes `variant` from an answer's fields (`headers` merged already):
/// its freshness recomputed, its fields and `Date` replaced. A response
/// that may no longer be stored drops the key.
fn refresh_with(
    gateway: &Gateway,
    request: &ProxyRequest,
    variant: &Variant,
    headers: Bytes,
    date: Option<Bytes>,
    age: Option<Bytes>,
    request_ms: u64,
) -> Option<Rc<Variant>> {
    let field = |name: &[u8]| shardgate_http::fields::field_joined(&headers, name, b", ").map(Bytes::from);
    let fields = CacheFields {
        cache_control: field(b"cache-control"),
        cdn_cache_control: field(b"cdn-cache-control"),
        shardgate_cache_control: field(b"shardgate-cache-control"),
        expires: field(b"expires"),
        date: date.clone(),
        age,
        vary: field(b"vary"),
        etag: field(b"etag"),
        last_modified: field(b"last-modified"),
        set_cookie: field(b"set-cookie").is_some(),
        ..CacheFields::default()
    };
    let stored = httpcache::storable(
        request_facts(request),
        &response_fields(variant.status, &fields),
        request_ms,
        now_ms(),
        heuristics(gateway),
    );
    let date = date.as_deref().and_then(httpcache::parse_http_date_ms).map(httpcache::http_date);
    let mut cache = gateway.cache.borrow_mut();
    match stored {
        Ok(stored) => {
            cache.refresh(request.hash, &request.key, &variant.vary_values, stored.freshness, Some(headers), date)
        }
        Err(_) => {
            cache.remove(request.hash);
            None
        }
    }
}

/// A HEAD's `200` updates the stored GET responses it describes (RFC 9111
/// §4.3.5): where its validators (`ETag`, `Last-Modified`) and
/// `Content-Length` agree with a stored one, that one is refreshed from it
/// as from a 304; where they disagree, the stored one is made stale.
fn update_from_head(
    gateway: &Gateway,
    request: &ProxyRequest,
    response: &OriginResponse,
    length: Option<u64>,
    request_ms: u64,
) {
    if response.status != 200 {
        return;
    }
    let variants = gateway.cache.borrow().variants(request.hash, &request.key);
    let now = now_ms();
    for variant in variants {
        let same = |received: &Option<Bytes>, stored: &Option<Bytes>| received.is_none() || received == stored;
        let agrees = same(&response.fields.etag, &variant.etag)
            && same(&response.fields.last_modified, &variant.last_modified)
            && length.is_none_or(|l| l == variant.body.len());
        if agrees {
            let headers = without_fields(&merge_fields(&variant.headers, &response.headers), &CACHE_ONLY_FIELDS);
            refresh_with(
                gateway,
                request,
                &variant,
                headers,
                response.fields.date.clone(),
                response.fields.age.clone(),
                request_ms,
            );
        } else {
            gateway.cache.borrow_mut().expire(now, request.hash);
        }
    }
}

/// Straight to the origin: unsafe and other methods (`fwd=method`), GET
/// and HEAD that the cache does not handle (`fwd` says why). A GET's
/// answer is stored if it may be now; a HEAD's updates the stored GET
/// responses it describes.
pub(super) async fn pass(
    gateway: &Rc<Gateway>,
    request: &Rc<ProxyRequest>,
    fwd: Forward,
    streamed: Option<StreamedRequestBody>,
) -> (Response, CacheResult) {
    let cacheable = matches!(request.method, Method::Get | Method::Head) && !request.carries_cookie();
    let result = if cacheable { CacheResult::Miss } else { CacheResult::Bypass };
    let fwd = if request.is_safe() { fwd } else { Forward::Method };
    let idempotent = !matches!(request.method, Method::Post | Method::Patch);
    let request_ms = now_ms();
    let asker = asker(gateway, request);
    // A range of a key the cache passes (hit-for-miss: too large to store,
    // or uncacheable) goes to the origin as asked: its 206 is relayed, not
    // stored, and not narrowed again.
    let range_passed = fwd == Forward::Bypass && request.field(b"range").is_some();
    let sent = if cacheable && request.method == Method::Get && !range_passed {
        send(gateway, |host| request.encode_for_origin(host, Some(&Validators::default())), None, true, true, asker)
            .await
    } else {
        let expect_body = request.method != Method::Head;
        match streamed {
            Some(StreamedRequestBody { reader, length }) => {
                let body = Some(StreamedBody { reader, chunked: length.is_none() });
                let encode = |host: &[u8]| request.encode_streamed(host, length);
                send(gateway, encode, body, expect_body, idempotent, asker).await
            }
            None => {
                send(gateway, |host| request.encode_for_origin(host, None), None, expect_body, idempotent, asker).await
            }
        }
    };
    let sent = match sent {
        Err(error) => {
            let status = forward_status(fwd, None, None);
            return (error_response(error.response(), result, status), result);
        }
        Ok(sent) => sent,
    };
    let status = sent.exchanged.response.status;
    if !request.is_safe() && status < 400 {
        super::invalidate(gateway, request, &sent.exchanged.response.fields);
    }
    // A HEAD's answer updates what is stored (RFC 9111 §4.3.5) when it is
    // one a shared cache may keep: then it says nothing of one client only,
    // even if that client sent a cookie.
    if request.method == Method::Head
        && status == 200
        && storing(gateway, request, &sent.exchanged.response, request_ms).is_ok()
    {
        let length = sent.exchanged.response.fields.content_length;
        update_from_head(gateway, request, &sent.exchanged.response, length, request_ms);
    }
    let storable = cacheable && request.method == Method::Get && status < 500 && !range_passed;
    let storing = if storable { storing(gateway, request, &sent.exchanged.response, request_ms).ok() } else { None };
    let answer = Answer { sent, storing, mark: storable, fwd };
    match relay_answer(gateway, request, answer, None, &|| {}).await {
        Some((mut response, facts)) => {
            if result == CacheResult::Bypass {
                if let shardgate_http::response::Extra::Proxied(proxied) = &mut response.extra {
                    proxied.x_cache = Some(CacheResult::Bypass.name());
                    if let Some(status) = &mut proxied.cache_status {
                        status.stored = false;
                    }
                }
            }
            (present(request, response, || facts), result)
        }
        None => unreachable!("a pass has no flight to settle"),
    }
}
