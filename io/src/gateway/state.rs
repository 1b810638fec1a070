//! One core's gateway state, and the exchange with its origins that every
//! part of the gateway goes through ([`send`]): the balancer, the breakers
//! and the health checks. The caching proxy (`gateway`) and the
//! asynchronous writes (`gateway::writes`) sit on top of it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hashbrown::HashMap;
use shardgate_http::proxy::ProxyRequest;
use shardgate_shards::breaker::Breaker;
use shardgate_shards::httpcache::HttpCache;
use shardgate_shards::quota::identity_of;

use super::flight::Flight;
use super::writes_queue::Queue;
use crate::admission::{Admission, AdmissionSettings};
use crate::cluster::Link;
use crate::config::GatewayConfig;
use crate::core::Core;
use crate::origin::health::ProbeSettings;
use crate::origin::{self, ExchangeSettings, Exchanged, Origin, OriginError, Outgoing, StreamedBody};
use crate::runtime::unix_ms;

/// One core's gateway state: its cache, its fetches in flight, its
/// origins and its write queue, on top of the core it runs on.
pub struct Gateway {
    pub(super) core: Rc<Core>,
    pub(super) config: GatewayConfig,
    pub(super) cache: RefCell<HttpCache>,
    pub(super) flights: RefCell<HashMap<u64, Rc<Flight>>>,
    pub(super) origins: Vec<Origin>,
    next_origin: Cell<usize>,
    pub(super) writes: RefCell<Queue>,
    /// The other nodes' services (cluster mode): writes go through NATS.
    pub(super) cluster: Option<Arc<Link>>,
}

impl Gateway {
    pub fn new(core: Rc<Core>, config: &GatewayConfig, cluster: Option<Arc<Link>>) -> Gateway {
        let cache_bytes = core.config().http_cache_bytes_per_shard();
        let overload = config.overload;
        let settings = AdmissionSettings {
            queue_entries: overload.queue_entries_max.div_ceil(core.shard_count() as usize),
            queue_timeout: overload.queue_timeout,
            retry_budget_percent: overload.retry_budget_percent,
        };
        let origins = config
            .origins
            .iter()
            .enumerate()
            .map(|(index, address)| {
                let slots = Arc::clone(&core.shared().origin_slots[index]);
                let metrics = Arc::clone(&core.shared().metrics);
                let who = (core.id(), index, address.url.clone());
                let admission = Rc::new(Admission::new(who, slots, settings, metrics));
                let breaker = Breaker::new(config.breaker_failures, config.breaker_open.as_millis() as u64);
                let health = Arc::clone(&core.shared().origin_health[index]);
                Origin::new(address.clone(), breaker, admission, health)
            })
            .collect();
        let tag_bytes = config.cache.tag_bytes_max / u64::from(core.shard_count());
        Gateway {
            core,
            config: config.clone(),
            cache: RefCell::new(HttpCache::new(cache_bytes, tag_bytes)),
            flights: RefCell::new(HashMap::new()),
            origins,
            next_origin: Cell::new(0),
            writes: RefCell::new(Queue::default()),
            cluster,
        }
    }

    pub fn core(&self) -> &Rc<Core> {
        &self.core
    }

    /// The client identity of a request, as the rate limiter sees it: its
    /// `X-API-Key`, else its address (the last `X-Forwarded-For` hop with
    /// `--trust-forwarded-for`).
    pub(super) fn identity(&self, request: &ProxyRequest) -> Option<u64> {
        let forwarded = request
            .field(b"x-forwarded-for")
            .filter(|_| self.core.config().rate_limits.trust_forwarded_for)
            .and_then(|value| value.rsplit(|&b| b == b',').next())
            .and_then(|hop| std::str::from_utf8(hop.trim_ascii()).ok())
            .and_then(|hop| hop.parse().ok());
        identity_of(request.field(b"x-api-key"), forwarded.or(request.peer))
    }

    /// Whether the request presents the admin token.
    pub(super) fn is_admin(&self, request: &ProxyRequest) -> bool {
        let token = self.config.admin_token.as_ref().map(|t| t.expose());
        matches!((request.field(b"authorization"), token), (Some(given), Some(token)) if bearer_matches(given, token))
    }

    pub(super) fn limits(&self) -> ExchangeSettings {
        ExchangeSettings {
            connect_timeout: self.config.connect_timeout,
            timeout: self.config.timeout,
            pool_connections_max: self.config.pool_connections_max,
        }
    }
}

/// The wall clock in milliseconds: the gateway reads it where an origin
/// exchange ends, which the core's per-turn clock cannot see.
pub(super) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Who asks for an exchange: the client identity whose share of the
/// origin's queue it takes, whether it is a retry (an async write's
/// redelivery) that the retry budget must allow, and whether it may wait
/// for a slot (not when a stale copy can be served instead).
#[derive(Clone, Copy, Debug)]
pub(super) struct Asker {
    pub identity: u64,
    pub retry: bool,
    pub wait: bool,
}

/// An origin's answer, and which origin gave it (where its connection
/// goes back once a streamed body is read).
pub(super) struct Sent {
    pub exchanged: Exchanged,
    pub origin: usize,
    /// How long the origin took to answer the head.
    pub origin_us: u32,
}

/// Sends a request to the next origin the balancer and breakers allow,
/// once it holds one of that origin's slots, recording the result with
/// the origin's breaker. A request whose connection could not be made was
/// never sent: it tries the next origin (nginx's `proxy_next_upstream
/// error`), at most once per origin, as a retry the budget must allow. A
/// request whose body streams from the client is sent once: `encode` is
/// then called once and `body` taken.
pub(super) async fn send(
    gateway: &Gateway,
    encode: impl Fn(&[u8]) -> Bytes,
    mut body: Option<StreamedBody>,
    expect_body: bool,
    idempotent: bool,
    asker: Asker,
) -> Result<Sent, OriginError> {
    let mut result = Err(OriginError::CircuitOpen);
    let attempts = if body.is_some() { 1 } else { gateway.origins.len() };
    for attempt in 0..attempts {
        let asker = Asker { retry: asker.retry || attempt > 0, ..asker };
        let sent = send_once(gateway, &encode, body.take(), expect_body, idempotent, asker).await;
        if attempt > 0 && matches!(sent, Err(OriginError::RetryRefused)) {
            break; // The first failure stands.
        }
        result = sent;
        if !matches!(result, Err(OriginError::Connect(_) | OriginError::ConnectTimeout)) {
            break;
        }
    }
    result
}

async fn send_once(
    gateway: &Gateway,
    encode: &impl Fn(&[u8]) -> Bytes,
    body: Option<StreamedBody>,
    expect_body: bool,
    idempotent: bool,
    asker: Asker,
) -> Result<Sent, OriginError> {
    let (index, probe) = origin::pick(&gateway.origins, &gateway.next_origin, now_ms())?;
    let origin = &gateway.origins[index];
    let guard = ProbeGuard { origin, armed: probe };
    if asker.retry && !origin.admission.try_retry() {
        return Err(OriginError::RetryRefused);
    }
    let permit = origin.admission.acquire(asker.identity, asker.wait).await.map_err(OriginError::Overloaded)?;
    // Counted once it is sent: requests the limit refused never reached
    // the origin and must not widen its retry budget.
    if !asker.retry {
        origin.admission.first_attempt();
    }
    let started = std::time::Instant::now();
    let outgoing = Outgoing { head: encode(origin.host()), body };
    let mut result = origin.exchange(outgoing, expect_body, idempotent, gateway.limits()).await;
    let origin_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    permit.record(result.is_ok());
    // A body still arriving keeps the slot until it has all been read.
    if let Ok(Exchanged { rest: Some(rest), .. }) = &mut result {
        rest.hold(permit);
    }
    std::mem::forget(guard);
    let success = matches!(&result, Ok(exchanged) if exchanged.response.status < 500);
    let mut breaker = origin.breaker.borrow_mut();
    let opened_before = breaker.opened();
    let now = now_ms();
    breaker.record(now, success, probe);
    gateway.core.metrics().origin_request(!success);
    gateway.core.metrics().breaker(index, breaker.state(now).gauge(), breaker.opened() > opened_before);
    result.map(|exchanged| Sent { exchanged, origin: index, origin_us })
}

/// Frees the half-open probe slot if the probe's request is cancelled.
struct ProbeGuard<'a> {
    origin: &'a Origin,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.origin.breaker.borrow_mut().probe_abandoned();
        }
    }
}

/// Starts the task per origin that hands this core's waiters the slots
/// other cores free.
pub fn start_admission(gateway: &Gateway) {
    for origin in &gateway.origins {
        monoio::spawn(Rc::clone(&origin.admission).pump());
    }
}

/// Probes every origin for the whole process (run on one core only),
/// until shutdown: `--origin-health-path` or a TCP connect, every
/// `--origin-health-interval` (`origin::health`).
pub async fn health_loop(gateway: Rc<Gateway>) {
    let settings = ProbeSettings {
        path: gateway.config.health.path.clone(),
        interval: gateway.config.health.interval,
        connect_timeout: gateway.config.connect_timeout,
        timeout: gateway.config.timeout.min(gateway.config.health.interval.max(gateway.config.connect_timeout)),
    };
    let origins = gateway.origins.iter().map(|o| (o.address.clone(), Arc::clone(&o.health))).collect();
    let mesh = Arc::clone(gateway.core.mesh());
    origin::health::probe_loop(origins, settings, move || mesh.shutdown_requested()).await;
}

/// `Bearer <token>` with the token compared in constant time.
pub(super) fn bearer_matches(given: &[u8], token: &str) -> bool {
    let Some(presented) = given.strip_prefix(b"Bearer ").or_else(|| given.strip_prefix(b"bearer ")) else {
        return false;
    };
    let presented = presented.trim_ascii();
    let expected = token.as_bytes();
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
