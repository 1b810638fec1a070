//! Sliding-window rate limiting: the owner's windows and other cores' leases.
//!
//! # The window
//! A [`Window`] splits a policy's window `W` into `N - 1` buckets of width
//! `w = W / (N - 1)` and keeps `N` counters in a ring: the current bucket
//! and the `N - 1` before it. The count "in the last `W`" is estimated as
//!
//! ```text
//! current + the N - 2 full buckets before it + oldest × (w - elapsed) / w
//! ```
//!
//! where `elapsed` is how far the clock is into the current bucket: the
//! oldest bucket slides out of the window linearly. `N = 2` is Cloudflare's
//! two-window counter; more buckets assume less about how requests spread
//! inside a bucket and so err less on average. No bucket count removes the
//! worst case: a burst at the very end of the oldest bucket is assumed to
//! slide out while it is still wholly inside the window, so in that moment
//! up to twice the limit can fall in one trailing window (measured and
//! reported; an exact sliding log would cost memory per request). [`SUB_WINDOWS`] was
//! chosen by measuring against an exact sliding log (`shardgate-bench
//! ratelimit-accuracy`, figures in bench/README.md). All arithmetic is integer,
//! scaled by `w`, so a decision never depends on float rounding.
//!
//! # One limit across cores
//! An identity's state lives on one shard, its *owner* (by the routing hash
//! of the identity). The owner decides its own requests with
//! [`Limiter::acquire`]. Another core asks the owner for a *lease* of
//! several permits, which the owner charges to the window at once; the core
//! then spends them locally ([`Leases`]) and asks again when they run out.
//! Because permits are charged when granted, no core can admit more than
//! the owner allowed: a lease can only make the limit stricter, never
//! looser. Permits left in a lease when it expires are given back
//! ([`Limiter::give_back`]) so that a lease does not starve other cores.
//! A refusal is remembered by the asking core until the `Retry-After` it
//! carries, so a limited client costs no cross-core round trip per request.
//!
//! # Bounded memory
//! The owner keeps at most `capacity` identities (derived from
//! `--rate-limit-state-bytes` with [`SLOT_BYTES`]). A new identity beyond it
//! replaces one found by a CLOCK sweep: first any identity idle for longer
//! than the longest window (its state is all zero, so dropping it changes
//! no decision), else one not seen since the hand last passed. New
//! identities start unreferenced, so a flood of one-shot addresses evicts
//! itself before it evicts clients that keep coming back.

use hashbrown::HashTable;

/// Counters per window, current bucket included: `N - 1` buckets span the
/// window. Chosen by measurement (module docs).
pub const SUB_WINDOWS: usize = 9;
/// Longest window a policy may have: one day (keeps the scaled arithmetic
/// far from overflow: counts < 2^32 times widths < 2^27).
pub const WINDOW_MS_MAX: u64 = 86_400_000;

/// One limit: `limit` requests per `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub limit: u32,
    pub window_ms: u64,
}

impl Policy {
    /// A policy, if the limit is at least 1 and the window from 1 ms to a
    /// day. Windows shorter than the bucket count are widened to it.
    pub fn new(limit: u32, window_ms: u64) -> Option<Policy> {
        let valid = limit >= 1 && (1..=WINDOW_MS_MAX).contains(&window_ms);
        valid.then_some(Policy { limit, window_ms })
    }

    /// Whole seconds of the window, as `RateLimit-Policy: ...;w=` states it.
    pub fn window_s(&self) -> u64 {
        self.window_ms.div_ceil(1000)
    }
}

/// A sliding-window counter with `N` buckets (`N - 1` span the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window<const N: usize> {
    /// Index of the current bucket (`now / width`).
    bucket: u64,
    counts: [u32; N],
}

/// What the window says about `permits` more requests now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Permits granted (0 when refused).
    pub granted: u32,
    /// Requests the window still admits after this grant.
    pub remaining: u32,
    /// Milliseconds until the current bucket ends and the count drops.
    pub reset_ms: u64,
    /// When refused: milliseconds until one request would be admitted.
    pub retry_after_ms: u64,
}

impl<const N: usize> Default for Window<N> {
    fn default() -> Self {
        Window { bucket: 0, counts: [0; N] }
    }
}

impl<const N: usize> Window<N> {
    const BUCKETS_IN_WINDOW: u64 = {
        assert!(N >= 2, "a sliding window needs a current and a previous bucket");
        (N - 1) as u64
    };

    fn width_ms(policy: Policy) -> u64 {
        (policy.window_ms / Self::BUCKETS_IN_WINDOW).max(1)
    }

    /// Moves the ring to the bucket of `now_ms`, zeroing buckets that
    /// passed. A clock that went backwards keeps the current bucket.
    fn roll(&mut self, now_ms: u64, width_ms: u64) {
        let now_bucket = now_ms / width_ms;
        if now_bucket <= self.bucket {
            return;
        }
        let passed = (now_bucket - self.bucket).min(N as u64);
        for step in 1..=passed {
            self.counts[((self.bucket + step) % N as u64) as usize] = 0;
        }
        self.bucket = now_bucket;
    }

    /// The estimated count in the window ending now, times the width.
    fn estimate_scaled(&self, now_ms: u64, width_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.bucket * width_ms).min(width_ms);
        let oldest = ((self.bucket + 1) % N as u64) as usize;
        let recent: u64 = (0..N).filter(|&i| i != oldest).map(|i| u64::from(self.counts[i])).sum();
        recent * width_ms + u64::from(self.counts[oldest]) * (width_ms - elapsed)
    }

    /// Estimated requests in the window ending at `now_ms` (rounded down).
    pub fn estimate(&mut self, now_ms: u64, policy: Policy) -> u64 {
        let width_ms = Self::width_ms(policy);
        self.roll(now_ms, width_ms);
        self.estimate_scaled(now_ms, width_ms) / width_ms
    }

    /// Grants up to `want` permits (all or as many as fit) and counts them.
    pub fn acquire(&mut self, now_ms: u64, policy: Policy, want: u32) -> Decision {
        let width_ms = Self::width_ms(policy);
        self.roll(now_ms, width_ms);
        let capacity_scaled = u64::from(policy.limit) * width_ms;
        let used_scaled = self.estimate_scaled(now_ms, width_ms);
        let fit = capacity_scaled.saturating_sub(used_scaled) / width_ms;
        let granted = u64::from(want).min(fit) as u32;
        let current = (self.bucket % N as u64) as usize;
        self.counts[current] = self.counts[current].saturating_add(granted);
        let remaining = (fit - u64::from(granted)).min(u64::from(u32::MAX)) as u32;
        let reset_ms = (self.bucket + 1) * width_ms - now_ms.min((self.bucket + 1) * width_ms - 1);
        let retry_after_ms = if granted == 0 { self.wait_ms(now_ms, policy) } else { 0 };
        Decision { granted, remaining, reset_ms, retry_after_ms }
    }

    /// Takes back up to `permits` counted at `charged_ms` but never used,
    /// from the bucket that counted them. Once that bucket has left the
    /// ring the permits no longer count, and nothing is taken: taking them
    /// from a newer bucket would admit more than the limit later.
    pub fn give_back(&mut self, now_ms: u64, policy: Policy, permits: u32, charged_ms: u64) {
        let width_ms = Self::width_ms(policy);
        self.roll(now_ms, width_ms);
        let charged_bucket = charged_ms / width_ms;
        if charged_bucket > self.bucket || self.bucket - charged_bucket >= N as u64 {
            return;
        }
        let count = &mut self.counts[(charged_bucket % N as u64) as usize];
        *count -= permits.min(*count);
    }

    /// Milliseconds from `now_ms` until one more request fits, if no other
    /// arrives meanwhile. Walks the coming bucket boundaries: within a
    /// bucket the oldest count slides out linearly; at a boundary the
    /// oldest bucket leaves and the next becomes oldest.
    fn wait_ms(&self, now_ms: u64, policy: Policy) -> u64 {
        let width_ms = Self::width_ms(policy);
        let capacity_scaled = u64::from(policy.limit) * width_ms;
        let mut future = *self;
        let mut at_ms = now_ms.max(self.bucket * width_ms);
        for _ in 0..=N {
            let start_ms = future.bucket * width_ms;
            let oldest = u64::from(future.counts[((future.bucket + 1) % N as u64) as usize]);
            let at_start = future.estimate_scaled(start_ms, width_ms);
            // At elapsed e: at_start - oldest * e. Need ≤ capacity - width.
            let need = capacity_scaled - width_ms;
            if future.estimate_scaled(at_ms, width_ms) <= need {
                return at_ms - now_ms;
            }
            if oldest > 0 {
                let elapsed = (at_start - need).div_ceil(oldest);
                if elapsed < width_ms {
                    return (start_ms + elapsed).max(at_ms) - now_ms;
                }
            }
            at_ms = (future.bucket + 1) * width_ms;
            future.roll(at_ms, width_ms);
        }
        // Every counted bucket has left the window: a policy's limit ≥ 1 fits.
        at_ms - now_ms
    }
}

/// The window shardgate uses.
pub type RateWindow = Window<SUB_WINDOWS>;

/// Which policy a counter belongs to: every request, or unsafe ones only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    All = 0,
    Writes = 1,
}

/// One tracked identity and policy class on its owner shard.
#[derive(Clone, Debug)]
struct Slot {
    identity: u64,
    class: Class,
    /// Seen since the CLOCK hand last passed.
    referenced: bool,
    last_ms: u64,
    window: RateWindow,
}

/// Memory one tracked identity costs: its slot, its index entry (a `u32`
/// and a control byte) at the index's maximum load factor (7/8).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + (std::mem::size_of::<u32>() + 1) * 8 / 7 + 1;
// docs/spec.md §4 and README.md quote 78 bytes per client; a change of layout must update them.
const _: () = assert!(SLOT_BYTES == 78);

/// Counts for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterStats {
    pub evicted_idle: u64,
    pub evicted_active: u64,
}

/// The owner shard's windows, one per identity and class, within a fixed
/// number of slots.
pub struct Limiter {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    capacity: usize,
    hand: usize,
    /// Identities idle longer than this hold no counts any more.
    window_ms_max: u64,
    pub stats: LimiterStats,
}

fn mix(identity: u64, class: Class) -> u64 {
    identity ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Limiter {
    /// A limiter holding at most `capacity` (≥ 1) identity-class windows.
    pub fn new(capacity: usize, window_ms_max: u64) -> Limiter {
        assert!(capacity >= 1, "a limiter needs room for one identity");
        Limiter {
            slots: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
            capacity,
            hand: 0,
            window_ms_max,
            stats: LimiterStats::default(),
        }
    }

    /// Identity-class windows tracked now.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grants up to `want` permits to `identity` under `policy`.
    pub fn acquire(&mut self, now_ms: u64, identity: u64, class: Class, policy: Policy, want: u32) -> Decision {
        let (slot, seen_before) = self.slot(now_ms, identity, class);
        let slot = &mut self.slots[slot];
        slot.referenced |= seen_before;
        slot.last_ms = now_ms;
        slot.window.acquire(now_ms, policy, want)
    }

    /// Returns permits a lease granted at `charged_ms` did not use. Unknown
    /// identities are ignored: their window was evicted, so there is
    /// nothing to give back to.
    pub fn give_back(&mut self, now_ms: u64, unused: Unused) {
        let Unused { identity, class, policy, permits, charged_ms } = unused;
        let key = mix(identity, class);
        let slots = &self.slots;
        if let Some(&i) =
            self.index.find(key, |&i| slots[i as usize].identity == identity && slots[i as usize].class == class)
        {
            self.slots[i as usize].window.give_back(now_ms, policy, permits, charged_ms);
        }
    }

    /// The slot of `identity`, made if missing (evicting one when full),
    /// and whether it existed.
    fn slot(&mut self, now_ms: u64, identity: u64, class: Class) -> (usize, bool) {
        let key = mix(identity, class);
        let slots = &self.slots;
        let found =
            self.index.find(key, |&i| slots[i as usize].identity == identity && slots[i as usize].class == class);
        if let Some(&i) = found {
            return (i as usize, true);
        }
        let slot = Slot { identity, class, referenced: false, last_ms: now_ms, window: RateWindow::default() };
        let i = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let victim = self.victim(now_ms);
            let old = &self.slots[victim];
            let old_key = mix(old.identity, old.class);
            let entry = self.index.find_entry(old_key, |&i| i as usize == victim).expect("every slot is indexed");
            entry.remove();
            self.slots[victim] = slot;
            victim
        };
        let slots = &self.slots;
        self.index.insert_unique(key, i as u32, |&j| {
            let s = &slots[j as usize];
            mix(s.identity, s.class)
        });
        (i, false)
    }

    /// Picks the slot to reuse: the CLOCK hand's first idle or unreferenced
    /// slot. At most two passes: the first clears every reference bit.
    fn victim(&mut self, now_ms: u64) -> usize {
        for _ in 0..2 * self.capacity {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            let slot = &mut self.slots[i];
            if now_ms.saturating_sub(slot.last_ms) > self.window_ms_max {
                self.stats.evicted_idle += 1;
                return i;
            }
            if !slot.referenced {
                self.stats.evicted_active += 1;
                return i;
            }
            slot.referenced = false;
        }
        unreachable!("the second pass finds a slot whose bit the first cleared")
    }
}

/// What a core may decide alone about one request of an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// A leased permit was spent.
    Allowed { remaining: u32, reset_ms: u64 },
    /// The owner refused recently; refuse until then.
    Refused { retry_after_ms: u64 },
    /// Nothing to decide with: ask the owner for a lease.
    Ask,
}

/// What to do when a core cannot decide alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskPlan {
    /// Send a lease request for `want` permits.
    Send { want: u32 },
    /// A request for this identity is already on its way: wait for it.
    Follow,
    /// No room to track another identity's lease now (every entry waits
    /// for an answer): shed the request.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    identity: u64,
    class: Class,
    policy: Policy,
    permits: u32,
    /// When the owner counted the permits (the latest grant's time).
    charged_ms: u64,
    /// Permits unused at this time go back to the owner.
    expires_ms: u64,
    /// The owner's count of remaining requests when it granted the lease.
    remaining_at_grant: u32,
    reset_at_ms: u64,
    /// Refused until then (0: not refused).
    refused_until_ms: u64,
    /// A lease request is in flight: others wait for it instead of asking.
    asking: bool,
    /// Permits the next request asks for. Starts at 1 and doubles while
    /// leases run out before they expire; halves when one expires unused.
    /// A client seen once costs one permit, a hot one few round trips.
    want: u32,
}

/// A non-owner core's leases, bounded by `capacity` identities.
pub struct Leases {
    table: HashTable<Lease>,
    capacity: usize,
}

/// Permits to return to an identity's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unused {
    pub identity: u64,
    pub class: Class,
    pub policy: Policy,
    pub permits: u32,
    /// When the owner counted them.
    pub charged_ms: u64,
}

impl Lease {
    /// Takes the permits of an expired lease, to give back.
    fn take_expired(&mut self, now_ms: u64) -> Option<Unused> {
        if now_ms < self.expires_ms || self.permits == 0 {
            return None;
        }
        let permits = std::mem::take(&mut self.permits);
        let Lease { identity, class, policy, charged_ms, .. } = *self;
        Some(Unused { identity, class, policy, permits, charged_ms })
    }
}

impl Leases {
    pub fn new(capacity: usize) -> Leases {
        assert!(capacity >= 1);
        Leases { table: HashTable::with_capacity(capacity), capacity }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn find(&mut self, identity: u64, class: Class) -> Option<&mut Lease> {
        self.table.find_mut(mix(identity, class), |l| l.identity == identity && l.class == class)
    }

    /// Whether this core can decide alone, without spending.
    pub fn can_decide(&mut self, now_ms: u64, identity: u64, class: Class) -> bool {
        self.find(identity, class)
            .is_some_and(|l| (l.permits > 0 && now_ms < l.expires_ms) || now_ms < l.refused_until_ms)
    }

    /// Whether a lease request for the identity is in flight.
    pub fn is_asking(&mut self, identity: u64, class: Class) -> bool {
        self.find(identity, class).is_some_and(|l| l.asking)
    }

    /// Spends one leased permit, or reports a remembered refusal, or `Ask`.
    pub fn spend(&mut self, now_ms: u64, identity: u64, class: Class) -> LeaseCheck {
        let Some(lease) = self.find(identity, class) else {
            return LeaseCheck::Ask;
        };
        if lease.permits > 0 && now_ms < lease.expires_ms {
            lease.permits -= 1;
            let remaining = lease.remaining_at_grant.saturating_add(lease.permits);
            return LeaseCheck::Allowed { remaining, reset_ms: lease.reset_at_ms.saturating_sub(now_ms).max(1) };
        }
        if now_ms < lease.refused_until_ms {
            return LeaseCheck::Refused { retry_after_ms: lease.refused_until_ms - now_ms };
        }
        LeaseCheck::Ask
    }

    /// Plans a lease request for an identity this core cannot decide alone.
    /// On `Send` the entry is marked as asking until [`Leases::grant`] or
    /// [`Leases::cancel_ask`]. Permits of an expired lease, and of a lease
    /// evicted to make room, go to `unused`.
    pub fn ask(
        &mut self,
        now_ms: u64,
        identity: u64,
        class: Class,
        policy: Policy,
        want_max: u32,
        unused: &mut Vec<Unused>,
    ) -> AskPlan {
        if let Some(lease) = self.find(identity, class) {
            if lease.asking {
                return AskPlan::Follow;
            }
            if now_ms < lease.expires_ms {
                lease.want = lease.want.saturating_mul(2); // Spent before it expired.
            } else if let Some(expired) = lease.take_expired(now_ms) {
                lease.want /= 2; // Outlived its use.
                unused.push(expired);
            }
            lease.want = lease.want.clamp(1, want_max.max(1));
            lease.asking = true;
            return AskPlan::Send { want: lease.want };
        }
        if self.table.len() >= self.capacity {
            let victim = self.table.iter().find(|l| !l.asking).map(|l| (l.identity, l.class));
            let Some((victim_identity, victim_class)) = victim else {
                return AskPlan::Full;
            };
            let entry = self.table.find_entry(mix(victim_identity, victim_class), |l| {
                l.identity == victim_identity && l.class == victim_class
            });
            let Ok(entry) = entry else { unreachable!("the victim was just found") };
            let (mut lease, _) = entry.remove();
            unused.extend(lease.take_expired(u64::MAX));
        }
        let lease = Lease {
            identity,
            class,
            policy,
            permits: 0,
            charged_ms: 0,
            expires_ms: 0,
            remaining_at_grant: 0,
            reset_at_ms: 0,
            refused_until_ms: 0,
            asking: true,
            want: 1,
        };
        self.table.insert_unique(mix(identity, class), lease, |l| mix(l.identity, l.class));
        AskPlan::Send { want: 1 }
    }

    /// A lease request could not be sent: let the next request try.
    pub fn cancel_ask(&mut self, identity: u64, class: Class) {
        if let Some(lease) = self.find(identity, class) {
            lease.asking = false;
        }
    }

    /// Records the owner's answer to a lease request. Permits left from an
    /// earlier grant stay (two grants may overlap); a refusal is remembered
    /// until its retry time.
    pub fn grant(&mut self, now_ms: u64, identity: u64, class: Class, decision: Decision, lifetime_ms: u64) {
        let Some(lease) = self.find(identity, class) else {
            // Asking entries are never evicted or expired: nothing to record to.
            return;
        };
        lease.asking = false;
        if decision.granted == 0 {
            lease.refused_until_ms = now_ms + decision.retry_after_ms.max(1);
        } else {
            lease.refused_until_ms = 0;
            lease.permits += decision.granted;
            lease.charged_ms = now_ms;
        }
        lease.expires_ms = now_ms + lifetime_ms;
        lease.remaining_at_grant = decision.remaining;
        lease.reset_at_ms = now_ms + decision.reset_ms;
    }

    /// Removes leases that expired (and whose refusal ended), giving their
    /// permits back through `out`. Entries waiting for an answer stay.
    /// Returns how many leases were removed.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<Unused>) -> usize {
        let before = self.table.len();
        self.table.retain(|l| {
            let live = l.asking || now_ms < l.expires_ms || now_ms < l.refused_until_ms;
            if !live {
                out.extend(l.take_expired(now_ms));
            }
            live
        });
        before - self.table.len()
    }
}

#[cfg(test)]
mod tests;
