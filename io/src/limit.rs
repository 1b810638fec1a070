//! Per-client rate limiting in front of the API (docs/spec.md §4).
//!
//! A request's identity is its `X-API-Key`, else the peer address (or,
//! with `--trust-forwarded-for`, the last `X-Forwarded-For` hop), hashed by
//! `shardgate_shards::quota`. The identity's owner shard holds its windows
//! (`shardgate_shards::ratelimit`). The owner decides its own requests at
//! once; other cores spend leased permits and ask the owner for more only
//! when a lease runs out, so a client pays one cross-core round trip per
//! lease, not per request.
//!
//! In a cluster with `--cluster-redis` (docs/spec.md §8), Redis is every
//! identity's owner: every core of every node leases from it (through the
//! cluster's side thread) and no core decides alone. While Redis is
//! unreachable, each node goes back to the rules above with every limit
//! divided by `--cluster-size`.
//!
//! A request that needs a lease is not consumed: [`RateLimiter::check`]
//! returns [`Admission::Wait`], the connection finishes the responses
//! before it, waits for the lease, then decodes the same request again and
//! decides with the lease in hand.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use shardgate_http::codec::{Method, Request};
use shardgate_http::response::{RateHeaders, RateItem, Response, PROBLEM_TYPE_QUOTA_EXCEEDED};
use shardgate_shards::quota::{self, identity_of_address, identity_of_key};
use shardgate_shards::ratelimit::{AskPlan, Class, Decision, LeaseCheck, Leases, Limiter, Policy, Unused};
use shardgate_shards::route::shard_for_hash;

use crate::cluster::Link;
use crate::config::RateLimits;
use crate::core::{Core, LeaseTicket, Message};
use crate::runtime::mesh::{FORWARD_QUEUE_ENTRIES, REPLY_QUEUE_ENTRIES};

/// What the limiter says about one request.
pub enum Admission {
    /// Go on; the response carries these RateLimit fields (None: unlimited).
    Pass(Option<RateHeaders>),
    /// 429 with these RateLimit fields, or a 503 (None) when a lease could
    /// not be asked for.
    Refuse(Response, Option<RateHeaders>),
    /// Wait for leases, then decide again.
    Wait(LeaseWait),
}

/// The policies that apply to one request, with their identity.
struct Subject {
    identity: u64,
    owner: u32,
    checks: [Option<(Class, Policy)>; 2],
}

/// One core's rate limiting: the windows of the identities its shard owns,
/// and the permits it leased from other shards.
pub struct RateLimiter {
    core: Rc<Core>,
    /// The cluster link when `--cluster-redis` is set.
    redis: Option<Arc<Link>>,
    limits: RateLimits,
    /// Rate-limit windows of the client identities this shard owns.
    limiter: RefCell<Limiter>,
    /// Permits leased from other shards for identities they own.
    leases: RefCell<Leases>,
    /// Connections waiting for a lease answer; woken when any arrives. At
    /// most one entry per waiting request, so at most [`LEASE_WAITS_MAX`].
    waiters: RefCell<Vec<Waker>>,
    /// Requests waiting for a lease answer now (each holds a `LeaseWait`).
    waiting: Cell<usize>,
}

/// Requests one core lets wait for lease answers at once; past it, 503.
pub const LEASE_WAITS_MAX: usize = 4096;

impl RateLimiter {
    pub fn new(core: Rc<Core>, cluster: Option<Arc<Link>>) -> RateLimiter {
        let limits = core.config().rate_limits.clone();
        let shard_count = core.shard_count();
        let slots = limits.slots_per_shard(shard_count);
        RateLimiter {
            limiter: RefCell::new(Limiter::new(slots, limits.window_ms_max())),
            leases: RefCell::new(Leases::new(quota::leases_per_core(slots, REPLY_QUEUE_ENTRIES))),
            waiters: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
            limits,
            redis: cluster.filter(|link| link.config().redis.is_some()),
            core,
        }
    }

    /// Whether Redis decides now (cluster mode, Redis reachable).
    fn global(&self) -> bool {
        self.redis.as_ref().is_some_and(|link| link.redis_up())
    }

    /// What each limit is divided by: the cluster's size while Redis,
    /// configured, is unreachable; else 1.
    fn divisor(&self, global: bool) -> u32 {
        match &self.redis {
            Some(link) if !global => link.config().size,
            _ => 1,
        }
    }

    /// Decides `request` against its identity's limits.
    pub fn check(self: &Rc<Self>, request: &Request<'_>, peer: Option<IpAddr>, now_ms: u64) -> Admission {
        let global = self.global();
        match self.check_with(request, peer, now_ms, global) {
            Some(admission) => admission,
            // Redis could not be asked: this node decides alone.
            None => self.check_with(request, peer, now_ms, false).expect("a node decides alone"),
        }
    }

    /// Decides with Redis as every identity's owner (`global`), or with
    /// this node's shards; None when Redis could not be asked.
    fn check_with(
        self: &Rc<Self>,
        request: &Request<'_>,
        peer: Option<IpAddr>,
        now_ms: u64,
        global: bool,
    ) -> Option<Admission> {
        let divisor = self.divisor(global);
        let Some(subject) = subject(&self.limits, request, peer, self.core.shard_count(), divisor) else {
            return Some(Admission::Pass(None));
        };
        let local = subject.owner == self.core.id() && !global;
        if !local {
            match self.ask_leases(&subject, now_ms, global) {
                Asked::Decide => {}
                Asked::Then(admission) => return Some(admission),
                Asked::Unreachable => return None,
            }
        }
        let mut headers = RateHeaders::default();
        let mut retry_after_ms = 0;
        for (slot, &(class, policy)) in subject.checks.iter().flatten().enumerate() {
            let (remaining, reset_ms, refused_for_ms) = if local {
                let d = self.limiter.borrow_mut().acquire(now_ms, subject.identity, class, policy, 1);
                match d.granted {
                    0 => (0, d.retry_after_ms, Some(d.retry_after_ms)),
                    _ => (d.remaining, d.reset_ms, None),
                }
            } else {
                match self.leases.borrow_mut().spend(now_ms, subject.identity, class) {
                    LeaseCheck::Allowed { remaining, reset_ms } => (remaining, reset_ms, None),
                    LeaseCheck::Refused { retry_after_ms } => (0, retry_after_ms, Some(retry_after_ms)),
                    LeaseCheck::Ask => unreachable!("checked above that this core can decide"),
                }
            };
            if let Some(wait_ms) = refused_for_ms {
                retry_after_ms = retry_after_ms.max(wait_ms.max(1));
            }
            headers.items[slot] = Some(RateItem {
                writes: class == Class::Writes,
                quota: policy.limit,
                window_s: policy.window_s() as u32,
                remaining,
                reset_s: reset_ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32,
            });
        }
        let metrics = self.core.metrics();
        if retry_after_ms == 0 {
            metrics.rate_allowed();
            return Some(Admission::Pass(Some(headers)));
        }
        metrics.rate_limited();
        let retry_after_s = retry_after_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32;
        let detail = format!("rate limit exceeded; retry in {retry_after_s} s");
        let response = Response {
            retry_after_s: Some(retry_after_s),
            ..Response::problem_typed(429, PROBLEM_TYPE_QUOTA_EXCEEDED, &detail)
        };
        Some(Admission::Refuse(response, Some(headers)))
    }

    /// Asks the owner (Redis when `global`) for the leases this core lacks
    /// to decide `subject`.
    fn ask_leases(self: &Rc<Self>, subject: &Subject, now_ms: u64, global: bool) -> Asked {
        let mut waits = [None, None];
        let mut unused = Vec::new();
        let mut refusal = None;
        let mut unreachable = false;
        for (slot, &(class, policy)) in subject.checks.iter().flatten().enumerate() {
            let identity = subject.identity;
            let mut leases = self.leases.borrow_mut();
            if leases.can_decide(now_ms, identity, class) {
                continue;
            }
            let lessees =
                self.core.shard_count() * self.redis.as_ref().filter(|_| global).map_or(1, |l| l.config().size);
            let want_max = quota::lease_permits(policy, lessees);
            match leases.ask(now_ms, identity, class, policy, want_max, &mut unused) {
                AskPlan::Follow => {}
                AskPlan::Send { want } => {
                    drop(leases);
                    let ticket = LeaseTicket { identity, class, policy };
                    if let Some(link) = self.redis.as_ref().filter(|_| global) {
                        let source = self.core.id();
                        let sent = self
                            .core
                            .forwards()
                            .ask_elsewhere(ticket, |token| link.lease(source, token, ticket, want, now_ms));
                        if !sent {
                            self.leases.borrow_mut().cancel_ask(identity, class);
                            unreachable = true;
                            break;
                        }
                    } else if let Err(overloaded) = self.core.forwards().ask(subject.owner, ticket, want) {
                        self.leases.borrow_mut().cancel_ask(identity, class);
                        refusal = Some(overloaded);
                        break;
                    }
                }
                AskPlan::Full => {
                    self.core.metrics().shed();
                    refusal = Some(Response::overloaded("too many clients waiting for rate-limit leases"));
                    break;
                }
            }
            waits[slot] = Some((identity, class));
        }
        for permits in unused {
            self.give_back(permits, now_ms);
        }
        if unreachable {
            return Asked::Unreachable;
        }
        if let Some(response) = refusal {
            return Asked::Then(Admission::Refuse(response, None));
        }
        if waits.iter().all(Option::is_none) {
            return Asked::Decide;
        }
        if self.waiting.get() >= LEASE_WAITS_MAX {
            self.core.metrics().shed();
            let response = Response::overloaded("too many requests wait for rate-limit leases on this core");
            return Asked::Then(Admission::Refuse(response, None));
        }
        self.waiting.set(self.waiting.get() + 1);
        Asked::Then(Admission::Wait(LeaseWait { limiter: Rc::clone(self), waits }))
    }

    /// The owner's side of a lease request: grants up to `want` permits.
    pub fn grant(&self, now_ms: u64, ticket: LeaseTicket, want: u32) -> Decision {
        let LeaseTicket { identity, class, policy } = ticket;
        let decision = self.limiter.borrow_mut().acquire(now_ms, identity, class, policy, want);
        self.core.metrics().lease(decision.granted > 0);
        decision
    }

    /// Records an owner's answer to this core's lease request.
    pub fn record_grant(&self, ticket: LeaseTicket, decision: Decision, now_ms: u64) {
        let lifetime_ms = quota::lease_lifetime_ms(ticket.policy);
        self.leases.borrow_mut().grant(now_ms, ticket.identity, ticket.class, decision, lifetime_ms);
    }

    /// Redis did not answer this core's lease request: the waiting
    /// requests decide again (with the node's own limit, Redis now being
    /// marked unreachable).
    pub fn record_unavailable(&self, ticket: LeaseTicket) {
        self.leases.borrow_mut().cancel_ask(ticket.identity, ticket.class);
    }

    /// Wakes the connections waiting for lease answers.
    pub fn wake_waiters(&self) {
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Returns unused leased permits to their owner. Best effort: when the
    /// owner's queue is more than half full they are dropped, which can
    /// only make the limit stricter for a moment, never looser; give-backs
    /// never take the second half of an owner's queue, so a burst of
    /// expiring leases cannot shed requests.
    pub fn give_back(&self, unused: Unused, now_ms: u64) {
        if let Some(link) = self.redis.as_ref().filter(|_| self.global()) {
            link.give_back(unused, now_ms);
            return;
        }
        let owner = shard_for_hash(unused.identity, self.core.shard_count());
        if owner == self.core.id() {
            self.limiter.borrow_mut().give_back(now_ms, unused);
            return;
        }
        let _ = self.core.forwards().notify(owner, Message::GiveBack(unused), FORWARD_QUEUE_ENTRIES / 2);
    }

    /// The owner's side of a give-back.
    pub fn take_back(&self, unused: Unused, now_ms: u64) {
        self.limiter.borrow_mut().give_back(now_ms, unused);
    }

    /// Drops expired leases, returning their unused permits, and updates
    /// the limiter's gauges.
    pub fn expire(&self, now_ms: u64) {
        let mut unused = Vec::new();
        self.leases.borrow_mut().expire(now_ms, &mut unused);
        for permits in unused {
            self.give_back(permits, now_ms);
        }
        let limiter = self.limiter.borrow();
        let evicted = limiter.stats.evicted_idle + limiter.stats.evicted_active;
        self.core.metrics().rate_state(limiter.tracked(), evicted, self.leases.borrow().len());
    }
}

/// What asking for leases came to.
enum Asked {
    /// Leases in hand: decide now.
    Decide,
    /// Refuse, or wait for an answer.
    Then(Admission),
    /// Redis could not be asked.
    Unreachable,
}

/// The identity and the policies of `request` (each limit divided by
/// `divisor`, at least 1), or None when no limit applies.
fn subject(
    limits: &RateLimits,
    request: &Request<'_>,
    peer: Option<IpAddr>,
    shard_count: u32,
    divisor: u32,
) -> Option<Subject> {
    let all = match request.x_api_key {
        Some(key) if !limits.keys.is_empty() => limits.keys.get(key).copied().unwrap_or(limits.all),
        _ => limits.all,
    };
    let writes = limits.writes.filter(|_| !matches!(request.method, Method::Get | Method::Head));
    if all.is_none() && writes.is_none() {
        return None;
    }
    let identity = match request.x_api_key {
        Some(key) => identity_of_key(key),
        None => {
            let forwarded = request
                .forwarded_for
                .filter(|_| limits.trust_forwarded_for)
                .and_then(|hop| std::str::from_utf8(hop).ok())
                .and_then(|hop| hop.parse::<IpAddr>().ok());
            identity_of_address(forwarded.or(peer)?)
        }
    };
    let divided = |p: Policy| Policy { limit: (p.limit / divisor).max(1), ..p };
    Some(Subject {
        identity,
        owner: shard_for_hash(identity, shard_count),
        checks: [all.map(|p| (Class::All, divided(p))), writes.map(|p| (Class::Writes, divided(p)))],
    })
}

/// A request waiting for lease answers, its own or another connection's.
/// It holds one of the core's [`LEASE_WAITS_MAX`] places until dropped.
pub struct LeaseWait {
    limiter: Rc<RateLimiter>,
    waits: [Option<(u64, Class)>; 2],
}

impl Drop for LeaseWait {
    fn drop(&mut self) {
        self.limiter.waiting.set(self.limiter.waiting.get() - 1);
    }
}

impl LeaseWait {
    /// Resolves once no lease request for these identities is in flight.
    pub async fn finish(self) {
        poll_fn(|cx| {
            let mut leases = self.limiter.leases.borrow_mut();
            if self.waits.iter().flatten().all(|&(identity, class)| !leases.is_asking(identity, class)) {
                return Poll::Ready(());
            }
            self.limiter.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
