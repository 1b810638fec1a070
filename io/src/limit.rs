//! Per-client rate limiting in front of the API (SPEC §4).
//!
//! A request's identity is its `X-API-Key`, else the peer address (or,
//! with `--trust-forwarded-for`, the last `X-Forwarded-For` hop). The
//! identity is hashed with the routing hash (see `subject`) and its owner
//! shard holds its windows (`shards::ratelimit`). The owner decides its own requests at
//! once; other cores spend leased permits and ask the owner for more only
//! when a lease runs out, so a client pays one cross-core round trip per
//! lease, not per request.
//!
//! A request that needs a lease is not consumed: [`check`] returns
//! [`Verdict::Wait`], the connection finishes the responses before it,
//! waits for the lease, then decodes the same request again and decides
//! with the lease in hand.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::Poll;

use shardgate_shards::ratelimit::{AskPlan, Class, Decision, LeaseCheck, Policy, SLOT_BYTES, SUB_WINDOWS};
use shardgate_shards::route::{key_hash, shard_for_hash};

use crate::core::Core;
use crate::http::codec::{Method, Request};
use crate::http::response::{RateHeaders, RateItem, Response, PROBLEM_TYPE_QUOTA_EXCEEDED};

/// Namespaces of client identities ("key:" and "ip:" in ASCII).
const IDENTITY_NAMESPACE_KEY: u64 = 0x6b65_793a;
const IDENTITY_NAMESPACE_ADDRESS: u64 = 0x0069_703a;
/// Leases a core holds at most, whatever the state budget.
const LEASES_PER_CORE_MAX: usize = 65_536;
const LEASES_PER_CORE_MIN: usize = 2 * crate::mesh::REPLY_QUEUE_ENTRIES;
/// A lease is a 1/LEASE_SHARE_DIVISOR share of the limit per core, so that
/// permits parked in leases stay a small part of the limit.
const LEASE_SHARE_DIVISOR: u32 = 16;
const LEASE_PERMITS_MAX: u32 = 256;
const LEASE_LIFETIME_MS_MIN: u64 = 10;
const LEASE_LIFETIME_MS_MAX: u64 = 1000;

/// The rate-limit configuration: policies and the state budget.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    /// Limit on every request of an identity (`--rate-limit`); None: off.
    pub all: Option<Policy>,
    /// Limit on unsafe methods (`--rate-limit-writes`); None: off.
    pub writes: Option<Policy>,
    /// Per-API-key replacements of `all` (`[rate_limit.keys]`); None: off for that key.
    pub keys: HashMap<Vec<u8>, Option<Policy>>,
    pub trust_forwarded_for: bool,
    /// Memory for identities' windows across all shards.
    pub state_bytes: u64,
}

impl RateLimits {
    pub fn enabled(&self) -> bool {
        self.all.is_some() || self.writes.is_some() || self.keys.values().any(Option::is_some)
    }

    /// Identity windows one shard may hold.
    pub fn slots_per_shard(&self, shard_count: u32) -> usize {
        ((self.state_bytes / u64::from(shard_count.max(1))) as usize / SLOT_BYTES).max(1)
    }

    /// Room for every lease request a core can have in flight, and more.
    pub fn leases_per_core(&self, shard_count: u32) -> usize {
        self.slots_per_shard(shard_count).clamp(LEASES_PER_CORE_MIN, LEASES_PER_CORE_MAX)
    }

    /// The longest window of any policy: idle longer, an identity holds nothing.
    pub fn window_ms_max(&self) -> u64 {
        let keyed = self.keys.values().flatten();
        self.all.iter().chain(self.writes.iter()).chain(keyed).map(|p| p.window_ms).max().unwrap_or(1)
    }
}

/// Most permits one lease asks for: a small share of the limit per core.
/// Leases start at one permit and grow toward this while they run out.
pub fn lease_permits(policy: Policy, shard_count: u32) -> u32 {
    (policy.limit / (LEASE_SHARE_DIVISOR * shard_count.max(1))).clamp(1, LEASE_PERMITS_MAX)
}

/// How long a lease's permits may be spent: one bucket of the window, so
/// permits counted at grant time are spent in about the bucket that counts them.
pub fn lease_lifetime_ms(policy: Policy) -> u64 {
    (policy.window_ms / (SUB_WINDOWS as u64 - 1)).clamp(LEASE_LIFETIME_MS_MIN, LEASE_LIFETIME_MS_MAX)
}

/// What the limiter says about one request.
pub enum Verdict {
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

/// Decides `request` against its identity's limits.
pub fn check(core: &Rc<Core>, request: &Request<'_>, peer: Option<IpAddr>, now_ms: u64) -> Verdict {
    let limits = &core.config.rate_limits;
    let Some(subject) = subject(limits, request, peer, core.shard_count()) else {
        return Verdict::Pass(None);
    };
    let local = subject.owner == core.id;
    if !local {
        if let Some(verdict) = ask_leases(core, &subject, now_ms) {
            return verdict;
        }
    }
    let mut headers = RateHeaders::default();
    let mut retry_after_ms = 0;
    for (slot, &(class, policy)) in subject.checks.iter().flatten().enumerate() {
        let (remaining, reset_ms, refused_for_ms) = if local {
            let d = core.limiter.borrow_mut().acquire(now_ms, subject.identity, class, policy, 1);
            match d.granted {
                0 => (0, d.retry_after_ms, Some(d.retry_after_ms)),
                _ => (d.remaining, d.reset_ms, None),
            }
        } else {
            match core.leases.borrow_mut().spend(now_ms, subject.identity, class) {
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
    let metrics = core.metrics();
    if retry_after_ms == 0 {
        metrics.rate_allowed();
        return Verdict::Pass(Some(headers));
    }
    metrics.rate_limited();
    let retry_after_s = retry_after_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32;
    let detail = format!("rate limit exceeded; retry in {retry_after_s} s");
    let response = Response {
        retry_after_s: Some(retry_after_s),
        ..Response::problem_typed(429, PROBLEM_TYPE_QUOTA_EXCEEDED, &detail)
    };
    Verdict::Refuse(response, Some(headers))
}

/// Asks the owner for the leases this core lacks to decide `subject`.
/// Returns None when it can decide now, else what to do meanwhile.
fn ask_leases(core: &Rc<Core>, subject: &Subject, now_ms: u64) -> Option<Verdict> {
    let mut wait = LeaseWait { core: Rc::clone(core), waits: [None, None] };
    let mut unused = Vec::new();
    let mut refusal = None;
    for (slot, &(class, policy)) in subject.checks.iter().flatten().enumerate() {
        let identity = subject.identity;
        let mut leases = core.leases.borrow_mut();
        if leases.can_decide(now_ms, identity, class) {
            continue;
        }
        let want_max = lease_permits(policy, core.shard_count());
        match leases.ask(now_ms, identity, class, policy, want_max, &mut unused) {
            AskPlan::Follow => {}
            AskPlan::Send { want } => {
                drop(leases);
                if let Err(overloaded) = core.ask_lease(subject.owner, identity, class, policy, want) {
                    core.leases.borrow_mut().cancel_ask(identity, class);
                    refusal = Some(overloaded);
                    break;
                }
            }
            AskPlan::Full => {
                core.metrics().shed();
                refusal = Some(Response::overloaded("too many clients waiting for rate-limit leases"));
                break;
            }
        }
        wait.waits[slot] = Some((identity, class));
    }
    for permits in unused {
        core.give_back(permits);
    }
    if let Some(response) = refusal {
        return Some(Verdict::Refuse(response, None));
    }
    wait.waits.iter().any(Option::is_some).then_some(Verdict::Wait(wait))
}

/// The identity and the policies of `request`, or None when no limit applies.
///
/// The identity is the routing hash (XXH3-64) of the API key, or of the
/// address's octets (4 or 16), XORed with a namespace constant so that an
/// API key can never name the same client as an address. Stable, like the
/// key hash: a shared limiter in front of several nodes may rely on it.
fn subject(limits: &RateLimits, request: &Request<'_>, peer: Option<IpAddr>, shard_count: u32) -> Option<Subject> {
    let all = match request.x_api_key {
        Some(key) if !limits.keys.is_empty() => limits.keys.get(key).copied().unwrap_or(limits.all),
        _ => limits.all,
    };
    let writes = limits.writes.filter(|_| !matches!(request.method, Method::Get | Method::Head));
    if all.is_none() && writes.is_none() {
        return None;
    }
    let identity = match request.x_api_key {
        Some(key) => key_hash(key) ^ IDENTITY_NAMESPACE_KEY,
        None => {
            let forwarded = request
                .forwarded_for
                .filter(|_| limits.trust_forwarded_for)
                .and_then(|hop| std::str::from_utf8(hop).ok())
                .and_then(|hop| hop.parse::<IpAddr>().ok());
            let hash = match forwarded.or(peer)? {
                IpAddr::V4(address) => key_hash(&address.octets()),
                IpAddr::V6(address) => key_hash(&address.octets()),
            };
            hash ^ IDENTITY_NAMESPACE_ADDRESS
        }
    };
    Some(Subject {
        identity,
        owner: shard_for_hash(identity, shard_count),
        checks: [all.map(|p| (Class::All, p)), writes.map(|p| (Class::Writes, p))],
    })
}

/// A request waiting for lease answers, its own or another connection's.
pub struct LeaseWait {
    core: Rc<Core>,
    waits: [Option<(u64, Class)>; 2],
}

impl LeaseWait {
    /// Resolves once no lease request for these identities is in flight.
    pub async fn finish(self) {
        poll_fn(|cx| {
            let mut leases = self.core.leases.borrow_mut();
            if self.waits.iter().flatten().all(|&(identity, class)| !leases.is_asking(identity, class)) {
                return Poll::Ready(());
            }
            self.core.lease_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Records an owner's answer to this core's lease request.
pub fn record_grant(core: &Core, identity: u64, class: Class, policy: Policy, decision: Decision, now_ms: u64) {
    core.leases.borrow_mut().grant(now_ms, identity, class, decision, lease_lifetime_ms(policy));
}
