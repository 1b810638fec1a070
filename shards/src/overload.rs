//! Overload control toward an origin, as arithmetic: how many requests may
//! be in flight ([`AdaptiveLimit`], a Vegas-class estimator), who waits for
//! a free slot and who is refused ([`FairQueue`]), and how many retries the
//! origin may see ([`RetryBudget`], Envoy's retry-budget rule). Time comes
//! in as `now_ms`; round-trip times as microseconds.
//!
//! # The adaptive limit
//! Netflix's concurrency-limits `VegasLimit` with BBR's ProbeRTT: every
//! window of at least [`WINDOW_MS`] and [`WINDOW_SAMPLES_MIN`] samples
//! compares the window's mean round trip with the no-load round trip (a
//! window's shortest one would miss a queue that comes and goes: any
//! request that found the origin idle for a moment hides it).
//! The queue the origin holds is estimated as `in_flight × (1 − noload /
//! rtt)`, with the window's mean requests in flight (Little's law applied
//! to the extra wait); above `beta` the limit falls halfway to what the
//! origin served without queueing plus `beta`. It grows only when it held
//! requests back and those that started at the limit saw no queue (under
//! `alpha`, their own mean round trip against the no-load one): RFC 7661's
//! rule that a congestion window grows only while it limits the sender.
//! With the half-used rule of Netflix's Vegas instead, a calm at half the
//! origin's capacity grew the limit to 36 against 16 (the bursts reached
//! the limit, and the window's mean hid the queue they met), and the next
//! overload began at 18 or 19 (2026-12-04 overload bench). It grows by
//! `√limit` until the first time it falls (a slow start, so a large
//! origin is found in seconds, in which a limit half used may grow), then
//! by `log10(limit)` rounded to whole requests, at least 1 (Netflix's
//! Vegas increase, from the limit in force: from 16.8 a step of 1.2 went
//! to 18 in one window, and a limit sampled once a second read 18 against
//! 16 whenever it caught that window). At 16 a step of √16 overshot the
//! knee by a quarter every time it probed upward.
//! `alpha` is at least half a request and `beta` at least 1.5, so an
//! origin that serves C requests at once settles at C plus one: the queue
//! of 1 that C + 1 holds reads about 1.3 (the bare round trip in a probe
//! and the loaded one differ by the gateway's own work), under `beta`, and
//! the queue of 2 at C + 2 over it. With `beta` 1.2 the limit fell from
//! C + 1 to C every other window (the origin's answers a second did not
//! change in the bench, but at C no request waits at the origin for the
//! moment one finishes).
//!
//! The no-load time is measured, not guessed: the first window and one
//! every [`PROBE_INTERVAL_MS`] are probes, in which the limit is a quarter
//! of itself (at least the floor) so that the origin's own queue drains
//! and its bare latency shows. The baseline is the shortest of the last
//! [`PROBES_KEPT`] probe windows' mean round trips. The mean, not the
//! shortest sample: every latency jitters, and the shortest of many
//! samples (or the lowest of hundreds of windows' means) sits below the
//! typical bare one by about the jitter, which the estimate then counts as
//! a queue of `limit × jitter`; with ±10% that alone held a 100-wide origin
//! near 16 (the jittered test). The shortest of three, not the last one:
//! a probe runs at whatever moment it falls on, and in the 2026-12-04
//! bench the means read 21.1 to 21.9 ms for the same origin; one 3% high
//! makes C + 1 read a queue under `alpha` and C + 2 one under `beta`, and
//! the limit sat at C + 2 until the next probe. A probe more than a
//! quarter slower than the baseline replaces it alone: the origin became
//! slower (a brown-out), and the older probes no longer hold. Between
//! probes only a window at least a fifth faster than the baseline replaces
//! it: when a brown-out ends the limit must not grow on the old, slow
//! baseline for up to a probe interval (it reached 129 against an origin
//! serving 16 at once in the 2026-12-04 brown-out bench before this
//! rule). A probe costs about 1% of the origin's throughput. Because the
//! baseline is re-learnt, an origin that became slower for good (a
//! brown-out) is followed: the limit falls when its latency rises, and
//! climbs back after the next probe shows the new latency to be its bare
//! one.

use std::collections::VecDeque;

use hashbrown::HashMap;

/// Shortest window of round-trip samples the limit is recomputed from.
pub const WINDOW_MS: u64 = 100;
/// Fewest samples a window needs (a slow origin's window lasts longer).
pub const WINDOW_SAMPLES_MIN: u32 = 8;
/// How often the no-load round trip is measured again.
pub const PROBE_INTERVAL_MS: u64 = 10_000;
/// A window whose mean round trip is under FASTER_NUM/FASTER_DEN of the
/// baseline replaces it between probes: the origin became faster (a
/// brown-out ended), by more than a window's mean jitters.
const FASTER_NUM: u64 = 4;
const FASTER_DEN: u64 = 5;
/// Least estimated queue under which the limit grows, and most over which it falls.
const ALPHA_MIN: f64 = 0.5;
const BETA_MIN: f64 = 1.5;
/// How many probes' means the no-load round trip is the shortest of.
pub const PROBES_KEPT: usize = 3;
/// Where `auto` starts (Netflix's default initial limit).
pub const AUTO_INITIAL: u32 = 20;

/// An adaptive concurrency limit for one origin.
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    floor: u32,
    ceiling: u32,
    limit: f64,
    /// The recent probes' mean round trips, newest first (`u64::MAX` where
    /// none yet), or a window's since that was a fifth faster alone.
    probes_us: [u64; PROBES_KEPT],
    probing: bool,
    /// The limit has fallen once: past the slow start, it grows slowly.
    fell_once: bool,
    probe_started_ms: Option<u64>,
    window_started_ms: Option<u64>,
    window_samples: u32,
    window_rtt_sum_us: u64,
    window_in_flight_sum: u64,
    window_in_flight_max: u32,
    window_at_limit_samples: u32,
    window_at_limit_rtt_sum_us: u64,
}

impl AdaptiveLimit {
    /// A limit between `floor` and `ceiling` (both at least 1), starting at
    /// [`AUTO_INITIAL`] within them, with a probe.
    pub fn new(floor: u32, ceiling: u32) -> AdaptiveLimit {
        assert!(floor >= 1 && floor <= ceiling, "the floor is at least 1 and under the ceiling");
        AdaptiveLimit {
            floor,
            ceiling,
            limit: f64::from(AUTO_INITIAL.clamp(floor, ceiling)),
            probes_us: [u64::MAX; PROBES_KEPT],
            probing: true,
            fell_once: false,
            probe_started_ms: None,
            window_started_ms: None,
            window_samples: 0,
            window_rtt_sum_us: 0,
            window_in_flight_sum: 0,
            window_in_flight_max: 0,
            window_at_limit_samples: 0,
            window_at_limit_rtt_sum_us: 0,
        }
    }

    /// The requests that may be in flight now (lower during a probe).
    pub fn limit(&self) -> u32 {
        if self.probing {
            self.probe_limit()
        } else {
            self.limit as u32
        }
    }

    pub fn probing(&self) -> bool {
        self.probing
    }

    fn probe_limit(&self) -> u32 {
        ((self.limit as u32) / 4).max(self.floor)
    }

    /// Records one exchange that took `rtt_us` with `in_flight` requests
    /// outstanding when it started (itself included). Returns the new
    /// limit when a window closed and the limit changed.
    pub fn sample(&mut self, now_ms: u64, rtt_us: u64, in_flight: u32) -> Option<u32> {
        if self.probing && in_flight > self.probe_limit() {
            return None; // Started before the probe drained the origin.
        }
        let started = *self.window_started_ms.get_or_insert(now_ms);
        self.probe_started_ms.get_or_insert(now_ms);
        self.window_samples += 1;
        self.window_rtt_sum_us += rtt_us.max(1);
        self.window_in_flight_sum += u64::from(in_flight);
        self.window_in_flight_max = self.window_in_flight_max.max(in_flight);
        if in_flight >= self.limit() {
            self.window_at_limit_samples += 1;
            self.window_at_limit_rtt_sum_us += rtt_us.max(1);
        }
        if now_ms.saturating_sub(started) < WINDOW_MS || self.window_samples < WINDOW_SAMPLES_MIN {
            return None;
        }
        let window = self.close_window();
        let before = self.limit();
        if self.probing {
            self.probing = false;
            self.probed(window.rtt_us);
            self.probe_started_ms = Some(now_ms);
        } else {
            if window.rtt_us.saturating_mul(FASTER_DEN) < self.noload_us().saturating_mul(FASTER_NUM) {
                self.relearn(window.rtt_us); // The origin became faster (a brown-out ended).
            }
            let next = self.next(self.noload_us() as f64, &window);
            self.fell_once |= next < self.limit;
            self.limit = next;
            let last_probe = self.probe_started_ms.unwrap_or(now_ms);
            self.probing = now_ms.saturating_sub(last_probe) >= PROBE_INTERVAL_MS;
        }
        (self.limit() != before).then_some(self.limit())
    }

    /// A probe window's mean round trip joins the recent ones, unless it
    /// is more than a quarter slower than their shortest: then the origin
    /// became slower (a brown-out) and the old ones no longer hold.
    fn probed(&mut self, rtt_us: u64) {
        if rtt_us.saturating_mul(FASTER_NUM) > self.noload_us().saturating_mul(FASTER_DEN) {
            self.relearn(rtt_us);
            return;
        }
        self.probes_us.rotate_right(1);
        self.probes_us[0] = rtt_us;
    }

    /// The bare round trip: the shortest of the recent probes' means.
    fn noload_us(&self) -> u64 {
        *self.probes_us.iter().min().expect("PROBES_KEPT > 0")
    }

    fn relearn(&mut self, rtt_us: u64) {
        self.probes_us = [u64::MAX; PROBES_KEPT];
        self.probes_us[0] = rtt_us;
    }

    fn close_window(&mut self) -> Window {
        let samples = u64::from(self.window_samples);
        let window = Window {
            rtt_us: self.window_rtt_sum_us / samples,
            in_flight_mean: self.window_in_flight_sum as f64 / samples as f64,
            in_flight_max: self.window_in_flight_max,
            at_limit_rtt_us: (self.window_at_limit_samples > 0)
                .then(|| self.window_at_limit_rtt_sum_us / u64::from(self.window_at_limit_samples)),
        };
        self.window_started_ms = None;
        self.window_samples = 0;
        self.window_rtt_sum_us = 0;
        self.window_in_flight_sum = 0;
        self.window_in_flight_max = 0;
        self.window_at_limit_samples = 0;
        self.window_at_limit_rtt_sum_us = 0;
        window
    }

    fn next(&self, noload: f64, window: &Window) -> f64 {
        let limit = self.limit;
        let in_force = limit.floor();
        let rtt = window.rtt_us as f64;
        // Little's law: of the requests in flight, the share of its time a
        // request spent beyond the bare round trip was spent queued.
        let queue = window.in_flight_mean * (1.0 - noload / rtt);
        let (alpha, beta) = ((in_force * 0.03).max(ALPHA_MIN), (in_force * 0.06).max(BETA_MIN));
        // Grow only a limit that held requests back (RFC 7661's rule for a
        // congestion window), and only if those that ran at the limit saw
        // no queue: in a calm with bursts a window's mean hides the queue
        // its bursts met. In the slow start, a limit half used may grow.
        let grow = if self.fell_once {
            window.at_limit_rtt_us.is_some_and(|at_limit| in_force * (1.0 - noload / at_limit as f64) < alpha)
        } else {
            queue < alpha && f64::from(window.in_flight_max) * 2.0 >= in_force
        };
        let next = if queue > beta {
            // What the origin served without queueing, plus beta; halfway.
            let target = window.in_flight_mean * noload / rtt + beta;
            limit - (limit - target).max(1.0) / 2.0
        } else if grow && self.fell_once {
            // Whole requests: from 16.8 a step of 1.2 would try 18 at once.
            in_force + limit.log10().round().max(1.0)
        } else if grow {
            limit + limit.sqrt()
        } else {
            limit
        };
        next.clamp(f64::from(self.floor), f64::from(self.ceiling))
    }
}

/// What one window of samples saw.
struct Window {
    /// The mean round trip.
    rtt_us: u64,
    /// The mean requests in flight when one started, and the most.
    in_flight_mean: f64,
    in_flight_max: u32,
    /// The mean round trip of those that started with the limit reached.
    at_limit_rtt_us: Option<u64>,
}

/// Why a request found no place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The queue holds its capacity.
    Full,
    /// This identity holds its share of the queue already.
    Share,
}

/// A bounded first-in first-out queue in which one identity holds at most
/// `share_max` places, so a single heavy client is refused before it can
/// fill the queue for everyone. Entries leave from the front ([`pop`]) or
/// from anywhere by ticket ([`remove`], a waiter that gave up), in O(1).
///
/// [`pop`]: FairQueue::pop
/// [`remove`]: FairQueue::remove
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Entries in ticket order; `None` where one left from the middle.
    entries: VecDeque<Option<(u64, T)>>,
    /// Ticket of `entries[0]`.
    front_ticket: u64,
    held: usize,
    capacity: usize,
    share_max: usize,
    per_identity: HashMap<u64, usize>,
}

impl<T> FairQueue<T> {
    /// `share_max` is clamped to 1..=capacity.
    pub fn new(capacity: usize, share_max: usize) -> FairQueue<T> {
        FairQueue {
            entries: VecDeque::new(),
            front_ticket: 0,
            held: 0,
            capacity,
            share_max: share_max.clamp(1, capacity.max(1)),
            per_identity: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Queues `item` for `identity`. Returns its ticket.
    pub fn push(&mut self, identity: u64, item: T) -> Result<u64, QueueRefusal> {
        if self.held >= self.capacity {
            return Err(QueueRefusal::Full);
        }
        let holds = self.per_identity.entry(identity).or_insert(0);
        if *holds >= self.share_max {
            return Err(QueueRefusal::Share);
        }
        *holds += 1;
        self.held += 1;
        let ticket = self.front_ticket + self.entries.len() as u64;
        self.entries.push_back(Some((identity, item)));
        Ok(ticket)
    }

    /// The oldest entry still queued, left in place.
    pub fn front(&self) -> Option<&T> {
        self.entries.iter().find_map(|entry| entry.as_ref().map(|(_, item)| item))
    }

    /// The oldest entry still queued.
    pub fn pop(&mut self) -> Option<T> {
        while let Some(entry) = self.entries.pop_front() {
            self.front_ticket += 1;
            if let Some((identity, item)) = entry {
                self.left(identity);
                return Some(item);
            }
        }
        None
    }

    /// Takes the entry of `ticket` out, wherever it is; None when it left.
    pub fn remove(&mut self, ticket: u64) -> Option<T> {
        let index = usize::try_from(ticket.checked_sub(self.front_ticket)?).ok()?;
        let (identity, item) = self.entries.get_mut(index)?.take()?;
        self.left(identity);
        while matches!(self.entries.front(), Some(None)) {
            self.entries.pop_front();
            self.front_ticket += 1;
        }
        Some(item)
    }

    fn left(&mut self, identity: u64) {
        self.held -= 1;
        if let Some(holds) = self.per_identity.get_mut(&identity) {
            *holds -= 1;
            if *holds == 0 {
                self.per_identity.remove(&identity);
            }
        }
    }
}

/// Length of the window retries are counted in, and its buckets.
pub const RETRY_WINDOW_MS: u64 = 10_000;
const RETRY_BUCKETS: usize = 10;
const RETRY_BUCKET_MS: u64 = RETRY_WINDOW_MS / RETRY_BUCKETS as u64;
/// Retries allowed per window whatever the traffic (Envoy's
/// `min_retry_concurrency` is 3), so a quiet origin still gets retried.
pub const RETRIES_MIN: u64 = 3;

/// Retries to one origin capped at a fraction of its requests over a
/// sliding window ([`RETRY_WINDOW_MS`], in [`RETRY_BUCKETS`] buckets):
/// retries can add at most `percent` to the load a failing origin sees.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    percent: u64,
    /// (bucket start, requests, retries), a ring indexed by bucket number.
    buckets: [(u64, u64, u64); RETRY_BUCKETS],
}

impl RetryBudget {
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget { percent: u64::from(percent), buckets: [(u64::MAX, 0, 0); RETRY_BUCKETS] }
    }

    fn bucket(&mut self, now_ms: u64) -> &mut (u64, u64, u64) {
        let start = now_ms - now_ms % RETRY_BUCKET_MS;
        let slot = &mut self.buckets[((now_ms / RETRY_BUCKET_MS) % RETRY_BUCKETS as u64) as usize];
        if slot.0 != start {
            *slot = (start, 0, 0);
        }
        slot
    }

    /// Counts a first attempt.
    pub fn request(&mut self, now_ms: u64) {
        self.bucket(now_ms).1 += 1;
    }

    /// Whether one more retry fits the budget; counted when it does.
    pub fn try_retry(&mut self, now_ms: u64) -> bool {
        let oldest = now_ms.saturating_sub(RETRY_WINDOW_MS - RETRY_BUCKET_MS);
        let (requests, retries) = self
            .buckets
            .iter()
            .filter(|(start, ..)| *start != u64::MAX && *start >= oldest - oldest % RETRY_BUCKET_MS && *start <= now_ms)
            .fold((0, 0), |(requests, retries), (_, q, r)| (requests + q, retries + r));
        let allowed = (requests * self.percent / 100).max(RETRIES_MIN);
        if retries >= allowed {
            return false;
        }
        self.bucket(now_ms).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests;
