//! A process-wide count of requests in flight to one origin, with a limit
//! and a wake-up per core: the one thing about an origin that cores share.
//!
//! Any core takes a free slot with one compare-and-swap, so a busy core
//! borrows what idle ones leave unused and no core is starved while others
//! idle. A core whose requests wait keeps their number in `waiting[core]`
//! and registers a waker; a core releasing a slot, or raising the limit,
//! wakes one waiting core (starting after itself, so cores take turns).
//! Lost wake-ups are excluded by ordering: a waiter publishes its count and
//! then tries again; a releaser decrements and then reads the counts
//! (both sequentially consistent), so one of them sees the other.
//!
//! With `auto`, the limit is an [`AdaptiveLimit`] fed with the round trips
//! of finished exchanges. Its lock is only ever tried: a core that finds it
//! held skips its sample rather than wait.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use crossbeam_utils::CachePadded;
use shardgate_shards::overload::AdaptiveLimit;

/// The limit `auto` stays within: at least this many requests in flight...
pub const AUTO_FLOOR: u32 = 4;
/// ...and at most this many.
pub const AUTO_CEILING: u32 = 512;
/// Least time between two "starts/stops rejecting" log lines of an origin.
const REJECTING_LOG_MS: u64 = 1000;

/// One origin's slots, shared by every core.
pub struct Slots {
    in_flight: CachePadded<AtomicU32>,
    limit: AtomicU32,
    adaptive: Option<Mutex<AdaptiveLimit>>,
    waiting: Box<[CachePadded<AtomicU32>]>,
    wakers: Box<[AtomicWaker]>,
    epoch: Instant,
    /// Whether requests are being refused, and when that last changed (ms since `epoch`).
    rejecting: AtomicBool,
    rejecting_changed_ms: AtomicU64,
    last_rejection_ms: AtomicU64,
    next_wake: AtomicUsize,
}

/// A change of an origin's rejecting state worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejecting {
    Started,
    Stopped,
}

impl Slots {
    /// `limit`: a fixed number, or None for `auto`.
    pub fn new(limit: Option<u32>, shard_count: u32) -> Slots {
        let adaptive = limit.is_none().then(|| AdaptiveLimit::new(AUTO_FLOOR, AUTO_CEILING));
        let initial = limit.unwrap_or_else(|| adaptive.as_ref().expect("auto").limit());
        Slots {
            in_flight: CachePadded::new(AtomicU32::new(0)),
            limit: AtomicU32::new(initial),
            adaptive: adaptive.map(Mutex::new),
            waiting: (0..shard_count).map(|_| CachePadded::new(AtomicU32::new(0))).collect(),
            wakers: (0..shard_count).map(|_| AtomicWaker::new()).collect(),
            epoch: Instant::now(),
            rejecting: AtomicBool::new(false),
            rejecting_changed_ms: AtomicU64::new(0),
            last_rejection_ms: AtomicU64::new(0),
            next_wake: AtomicUsize::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Relaxed)
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Acquire);
        self.in_flight.fetch_update(SeqCst, Relaxed, |taken| (taken < limit).then_some(taken + 1)).is_ok()
    }

    /// Whether a slot just freed may go on to another request without
    /// passing through the count (the limit did not fall under it).
    pub fn may_hand_over(&self) -> bool {
        self.in_flight.load(SeqCst) <= self.limit.load(Acquire)
    }

    /// Gives a slot back and wakes a core whose requests wait.
    pub fn release(&self, shard: u32) {
        self.in_flight.fetch_sub(1, SeqCst);
        self.wake_one(shard);
    }

    /// Whether a core other than `shard` has requests waiting.
    pub fn others_wait(&self, shard: u32) -> bool {
        self.waiting.iter().enumerate().any(|(core, waiting)| core != shard as usize && waiting.load(SeqCst) > 0)
    }

    /// Publishes how many of `shard`'s requests wait.
    pub fn set_waiting(&self, shard: u32, waiting: usize) {
        self.waiting[shard as usize].store(waiting as u32, SeqCst);
    }

    /// Registers the task of `shard` that hands out slots to its waiters.
    pub fn register(&self, shard: u32, waker: &std::task::Waker) {
        self.wakers[shard as usize].register(waker);
    }

    fn wake_one(&self, shard: u32) {
        let count = self.waiting.len();
        let start = self.next_wake.fetch_add(1, Relaxed);
        for step in 0..count {
            let core = (start + step) % count;
            if core != shard as usize && self.waiting[core].load(SeqCst) > 0 {
                self.wakers[core].wake();
                return;
            }
        }
    }

    fn wake_all(&self) {
        for (core, waiting) in self.waiting.iter().enumerate() {
            if waiting.load(SeqCst) > 0 {
                self.wakers[core].wake();
            }
        }
    }

    /// Milliseconds on this origin's own clock (for samples and log pacing).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Feeds `auto` one round trip; a no-op for a fixed limit. Returns the
    /// new limit when it changed.
    pub fn sample(&self, rtt_us: u64, in_flight: u32) -> Option<u32> {
        let adaptive = self.adaptive.as_ref()?;
        let changed = adaptive.try_lock().ok()?.sample(self.now_ms(), rtt_us, in_flight)?;
        let raised = changed > self.limit.swap(changed, AcqRel);
        if raised {
            self.wake_all();
        }
        Some(changed)
    }

    /// Notes a refused request; `Started` the first time in a while.
    pub fn rejected(&self) -> Option<Rejecting> {
        let now = self.now_ms();
        self.last_rejection_ms.store(now, Relaxed);
        self.change_rejecting(now, true).then_some(Rejecting::Started)
    }

    /// Notes a request that found a slot at once; `Stopped` once nothing
    /// was refused for a second.
    pub fn admitted_at_once(&self) -> Option<Rejecting> {
        if !self.rejecting.load(Relaxed) {
            return None;
        }
        let now = self.now_ms();
        let quiet = now.saturating_sub(self.last_rejection_ms.load(Relaxed)) >= REJECTING_LOG_MS;
        (quiet && self.change_rejecting(now, false)).then_some(Rejecting::Stopped)
    }

    fn change_rejecting(&self, now: u64, to: bool) -> bool {
        if self.rejecting.load(Relaxed) == to {
            return false;
        }
        let changed = self.rejecting_changed_ms.load(Relaxed);
        if changed != 0 && now.saturating_sub(changed) < REJECTING_LOG_MS {
            return false;
        }
        let won = self.rejecting.compare_exchange(!to, to, AcqRel, Relaxed).is_ok();
        if won {
            self.rejecting_changed_ms.store(now.max(1), Relaxed);
        }
        won
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back() {
        let slots = Slots::new(Some(2), 2);
        assert!(slots.try_acquire() && slots.try_acquire());
        assert!(!slots.try_acquire(), "the limit holds across cores");
        assert!(slots.may_hand_over());
        slots.release(0);
        assert_eq!(slots.in_flight(), 1);
        assert!(slots.try_acquire());
    }

    #[test]
    fn auto_starts_within_its_bounds() {
        let slots = Slots::new(None, 1);
        let limit = slots.limit();
        assert!((AUTO_FLOOR..=AUTO_CEILING).contains(&limit), "{limit}");
    }

    #[test]
    fn rejecting_is_reported_once_per_change() {
        let slots = Slots::new(Some(1), 1);
        assert_eq!(slots.rejected(), Some(Rejecting::Started));
        assert_eq!(slots.rejected(), None);
        assert_eq!(slots.admitted_at_once(), None, "not before a quiet second");
    }
}
