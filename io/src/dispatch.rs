//! From a request, or a message from another core, to the feature that
//! serves it.
//!
//! A [`Dispatcher`] is one core's front desk: it holds the core and the
//! features on top of it (rate limiting, the gateway in gateway mode; the
//! key-value API needs no state of its own). [`Dispatcher::dispatch`]
//! routes a decoded request: service endpoints, then the client's rate
//! limit, then the key-value API or the gateway. [`Dispatcher::drain_mailbox`]
//! serves what other cores sent: key-value ops, lease requests and
//! give-backs, gateway requests; and hands replies to the requests that
//! wait for them.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use shardgate_http::codec::{Method, Request};
use shardgate_http::fields::split_target;
use shardgate_http::response::{Extra, RateHeaders, Response};

use crate::cluster::Link;
use crate::core::{Answer, Core, Forward, LeaseTicket, Message, Reply};
use crate::gateway::{self, Gateway, ProxyRequest};
use crate::kv::{self, KV_PREFIX};
use crate::limit::{Admission, LeaseWait, RateLimiter};
use crate::runtime::metrics::Route;
use shardgate_http::proxy::StreamedRequestBody;

const SERVICE_ALLOW: &str = "GET, HEAD";

/// What dispatching a request produced.
pub enum Step {
    Ready(Response),
    /// A key-value request waiting on its owner, the disk or durability.
    Kv(kv::Pending),
    /// Gateway mode: relayed from (or answered for) an origin, here or on
    /// the cache key's owner core.
    Gateway(Pin<Box<dyn Future<Output = Response>>>),
    /// The client's rate limit needs a lease from another shard first: the
    /// request is left unconsumed and decided again once `LeaseWait` ends.
    Wait(LeaseWait),
}

/// A dispatched request: its step, its route (for metrics), the
/// RateLimit fields its response carries, and the shard that answers it
/// (for the access log; None: this core).
pub struct Dispatched {
    pub step: Step,
    pub route: Route,
    pub rate: Option<RateHeaders>,
    pub owner: Option<u32>,
}

/// One core and the features on top of it.
pub struct Dispatcher {
    core: Rc<Core>,
    limiter: Rc<RateLimiter>,
    gateway: Option<Rc<Gateway>>,
}

impl Dispatcher {
    /// `cluster`: the link to the other nodes' services (cluster mode).
    pub fn new(core: Rc<Core>, cluster: Option<Arc<Link>>) -> Dispatcher {
        let limiter = Rc::new(RateLimiter::new(Rc::clone(&core), cluster.clone()));
        let gateway =
            core.config().gateway.as_ref().map(|config| Rc::new(Gateway::new(Rc::clone(&core), config, cluster)));
        Dispatcher { core, limiter, gateway }
    }

    pub fn core(&self) -> &Rc<Core> {
        &self.core
    }

    pub fn limiter(&self) -> &Rc<RateLimiter> {
        &self.limiter
    }

    pub fn gateway(&self) -> Option<&Rc<Gateway>> {
        self.gateway.as_ref()
    }

    /// Routes one request. Local key-value ops run on this core's shard now.
    /// Everything but the service endpoints passes the client's rate limit first.
    /// `streamed`: the reader of a body the connection streams (gateway
    /// mode; see `Decoder::stream_bodies_from`).
    pub fn dispatch(
        &self,
        request: &Request<'_>,
        peer: Option<IpAddr>,
        now_ms: u64,
        streamed: Option<StreamedRequestBody>,
    ) -> Dispatched {
        let (path, query) = split_target(request.target);
        let route = match path {
            b"/healthz" => Route::Healthz,
            b"/readyz" => Route::Readyz,
            b"/metrics" => Route::Metrics,
            _ if self.gateway.is_some() => Route::Gateway,
            _ if path.starts_with(KV_PREFIX) => Route::Kv,
            _ => Route::Other,
        };
        if !matches!(route, Route::Kv | Route::Other | Route::Gateway) {
            return Dispatched {
                step: Step::Ready(self.service(request.method, route)),
                route,
                rate: None,
                owner: None,
            };
        }
        if !self.core.mesh().is_ready() {
            let response = Response::overloaded("the shards are recovering their logs; retry shortly");
            return Dispatched { step: Step::Ready(response), route, rate: None, owner: None };
        }
        let rate = match self.limiter.check(request, peer, now_ms) {
            Admission::Pass(rate) => rate,
            Admission::Refuse(response, rate) => {
                return Dispatched { step: Step::Ready(response), route, rate, owner: None }
            }
            Admission::Wait(wait) => return Dispatched { step: Step::Wait(wait), route, rate: None, owner: None },
        };
        let (step, owner) = match (&self.gateway, path.strip_prefix(KV_PREFIX)) {
            (Some(gateway), _) => to_gateway(gateway, request, peer, streamed),
            (None, Some(raw_key)) => match kv::request(&self.core, request, raw_key, query, now_ms) {
                kv::Step::Ready(response) => (Step::Ready(response), None),
                kv::Step::Pending(pending) => (Step::Kv(pending), None),
            },
            (None, None) => (Step::Ready(Response::problem(404, "no such resource")), None),
        };
        Dispatched { step, route, rate, owner }
    }

    /// Answers a service endpoint (never rate limited).
    fn service(&self, method: Method, route: Route) -> Response {
        if !matches!(method, Method::Get | Method::Head) {
            return Response { extra: Extra::Allow(&SERVICE_ALLOW), ..Response::problem(405, "use GET or HEAD") };
        }
        let mesh = self.core.mesh();
        match route {
            Route::Healthz => Response::text(200, "ok\n"),
            Route::Readyz if mesh.is_ready() => Response::text(200, "ready\n"),
            Route::Readyz => Response::overloaded("the shards are recovering their logs"),
            _ => Response {
                status: 200,
                content_type: Some(Bytes::from_static(b"text/plain; version=0.0.4; charset=utf-8")),
                body: Bytes::from(self.core.metrics_all().render(
                    &mesh.forward_depths(),
                    mesh.is_ready(),
                    &self.core.origin_gauges(),
                )),
                ..Response::default()
            },
        }
    }

    /// Serves up to `batch_max` messages from other cores, then every reply
    /// waiting for this one. `now_ms` is this loop turn's clock. Returns how
    /// many messages were handled.
    pub fn drain_mailbox(&self, now_ms: u64, batch_max: usize) -> usize {
        let mesh = self.core.mesh();
        let id = self.core.id();
        let mut handled = 0;
        while handled < batch_max {
            let Some(forward) = mesh.pop_forward(id) else {
                break;
            };
            handled += 1;
            self.serve(forward, now_ms);
        }
        self.core.metrics().hops_in(handled as u64);
        let mut leases_answered = false;
        while let Some(reply) = mesh.pop_reply(id) {
            if let Some((ticket, decision)) = self.core.forwards().deliver(reply) {
                match decision {
                    Some(decision) => self.limiter.record_grant(ticket, decision, now_ms),
                    None => self.limiter.record_unavailable(ticket),
                }
                leases_answered = true;
            }
            handled += 1;
        }
        if leases_answered {
            self.limiter.wake_waiters();
        }
        handled
    }

    /// Serves one message from another core.
    fn serve(&self, forward: Forward, now_ms: u64) {
        let Forward { source, token, message } = forward;
        let mesh = self.core.mesh();
        match message {
            Message::Kv { op, sync } => kv::serve_forwarded(&self.core, source, token, op, sync, now_ms),
            Message::Lease { identity, class, policy, want } => {
                let decision = self.limiter.grant(now_ms, LeaseTicket { identity, class, policy }, want);
                mesh.reply(source, Reply { token, answer: Answer::Lease(decision) });
            }
            Message::GiveBack(unused) => self.limiter.take_back(unused, now_ms),
            Message::Purge { hash, key } => {
                let gateway = self.gateway.as_ref().expect("purges reach gateway cores only");
                gateway::purge_key(gateway, hash, &key);
            }
            Message::PurgeTags { tags, soft, reply } => {
                let gateway = self.gateway.as_ref().expect("purges reach gateway cores only");
                let purged = gateway::purge_tags(gateway, &tags, soft);
                if reply {
                    mesh.reply(source, Reply { token, answer: Answer::Purged(purged) });
                }
            }
            Message::Deliver { write, id, retry, reply } => {
                let gateway = self.gateway.as_ref().expect("cluster writes reach gateway cores only");
                monoio::spawn(gateway::writes::deliver_from_cluster(Rc::clone(gateway), write, id, retry, reply));
            }
            Message::Gateway(request) => {
                let gateway = self.gateway.as_ref().expect("gateway requests reach gateway cores only");
                if let Some(hit) = gateway::try_hit(gateway, &request) {
                    mesh.reply(source, Reply { token, answer: Answer::Gateway(hit) });
                    return;
                }
                let gateway = Rc::clone(gateway);
                monoio::spawn(async move {
                    let response = gateway::handle(Rc::clone(&gateway), *request).await;
                    gateway.core().mesh().reply(source, Reply { token, answer: Answer::Gateway(response) });
                });
            }
        }
    }
}

/// Hands a gateway request to its owner core: this one, or another
/// through the mesh. A request whose body streams runs in a task of its
/// own, so that its exchange reads the body while the connection feeds it.
fn to_gateway(
    gateway: &Rc<Gateway>,
    request: &Request<'_>,
    peer: Option<IpAddr>,
    streamed: Option<StreamedRequestBody>,
) -> (Step, Option<u32>) {
    let trust_forwarded = gateway.core().config().rate_limits.trust_forwarded_for;
    let mut proxy_request = match ProxyRequest::parse(request, peer, trust_forwarded) {
        Ok(proxy_request) => proxy_request,
        Err(response) => return (Step::Ready(response), None),
    };
    proxy_request.streamed = streamed;
    let core = gateway.core();
    let owner = gateway::owner(&proxy_request, core.shard_count());
    if owner == core.id() {
        if let Some(hit) = gateway::try_hit(gateway, &proxy_request) {
            return (Step::Ready(hit), Some(owner));
        }
        let handled = gateway::handle(Rc::clone(gateway), proxy_request);
        let step = match request.streamed {
            Some(_) => Step::Gateway(Box::pin(monoio::spawn(handled))),
            None => Step::Gateway(Box::pin(handled)),
        };
        return (step, Some(owner));
    }
    let step = match core.forward(owner, Message::Gateway(Box::new(proxy_request))) {
        Ok(reply) => Step::Gateway(Box::pin(async move {
            match reply.await {
                Answer::Gateway(response) => response,
                _ => unreachable!("a gateway request is answered with a response"),
            }
        })),
        Err(response) => Step::Ready(response),
    };
    (step, Some(owner))
}
