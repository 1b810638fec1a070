use super::*;

/// A simulated origin that serves `capacity` requests at once in `base_us`
/// each and queues the rest (a connection pool): with L in flight a request
/// takes `base × max(1, L / capacity)`, plus `loaded_us` outside a probe
/// (the gateway's own work under load) or `probe_us` in every other probe
/// (one that ran while something else slowed the host), off by up to
/// ±`jitter_percent` (a fixed pseudo-random sequence: a real origin's
/// latency is never flat, and a limiter that only settles on flat latency
/// swings on a real one). Answers arrive one every `rtt / L`, as from L
/// requests in flight.
struct Origin {
    capacity: u32,
    base_us: u64,
    loaded_us: u64,
    probe_us: u64,
    jitter_percent: u64,
    random: u64,
    probes: u32,
    now_us: u64,
}

/// Demand that always has a request waiting.
const OVERLOAD: u32 = u32::MAX;

impl Origin {
    fn new(capacity: u32, base_us: u64) -> Origin {
        Origin {
            capacity,
            base_us,
            loaded_us: 0,
            probe_us: 0,
            jitter_percent: 0,
            random: 0x9e37_79b9_7f4a_7c15,
            probes: 0,
            now_us: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// Runs `ms` of simulated time in which `demand` requests want to be
    /// in flight. Returns the limit at the end of every [`WINDOW_MS`] not
    /// spent in a probe (a probe's limit is a quarter of it by design).
    fn run(&mut self, limit: &mut AdaptiveLimit, demand: u32, ms: u64) -> Vec<u32> {
        let end_us = self.now_us + ms * 1000;
        let mut mark_us = self.now_us + WINDOW_MS * 1000;
        let mut seen = Vec::new();
        while self.now_us < end_us {
            let in_flight = limit.limit().min(demand).max(1);
            let queued = self.base_us * u64::from(in_flight.max(self.capacity)) / u64::from(self.capacity);
            let extra_us = match (limit.probing(), self.probes % 2) {
                (true, 1) => self.probe_us,
                (true, _) => 0,
                (false, _) => self.loaded_us,
            };
            let rtt = self.jitter(queued + extra_us);
            self.now_us += (rtt / u64::from(in_flight)).max(1);
            let was_probing = limit.probing();
            limit.sample(self.now_ms(), rtt, in_flight);
            self.probes += u32::from(was_probing && !limit.probing());
            while self.now_us >= mark_us {
                if !limit.probing() {
                    seen.push(limit.limit());
                }
                mark_us += WINDOW_MS * 1000;
            }
        }
        seen
    }

    fn jitter(&mut self, rtt: u64) -> u64 {
        if self.jitter_percent == 0 {
            return rtt;
        }
        self.random = self.random.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (self.random >> 33) % (2 * self.jitter_percent + 1);
        rtt * (100 + off - self.jitter_percent) / 100
    }
}

fn bounds(seen: &[u32]) -> (u32, u32) {
    (*seen.iter().min().expect("windows"), *seen.iter().max().expect("windows"))
}

#[test]
fn the_limit_settles_just_over_the_origins_capacity() {
    for capacity in [4, 8, 16, 32, 100, 400] {
        let mut limit = AdaptiveLimit::new(1, 1000);
        let mut origin = Origin::new(capacity, 20_000);
        let seen = origin.run(&mut limit, OVERLOAD, 30_000);
        let (low, high) = bounds(&seen[seen.len() - 100..]);
        assert!(low >= capacity, "capacity {capacity}: fell to {low}");
        let bound = (f64::from(capacity) * 1.1).max(f64::from(capacity) + 1.0);
        assert!(f64::from(high) <= bound, "capacity {capacity}: rose to {high} (bound {bound})");
    }
}

#[test]
fn a_brown_out_lowers_the_limit_and_recovery_raises_it_again() {
    let mut limit = AdaptiveLimit::new(2, 1000);
    let mut origin = Origin::new(32, 20_000);
    origin.run(&mut limit, OVERLOAD, 20_000);
    let before = limit.limit();
    origin.base_us = 500_000;
    let slow = origin.run(&mut limit, OVERLOAD, 3_000);
    assert!(bounds(&slow).0 < before / 2, "the limit follows the latency down: {slow:?}");
    // The next probe shows the slow latency to be the bare one; the limit climbs back.
    origin.run(&mut limit, OVERLOAD, PROBE_INTERVAL_MS + 20_000);
    assert!((32..=35).contains(&limit.limit()), "re-learnt the capacity: {}", limit.limit());
    // The brown-out ends: the faster origin replaces the slow baseline at
    // once, so the limit does not climb past the capacity meanwhile.
    origin.base_us = 20_000;
    let after = origin.run(&mut limit, OVERLOAD, 10_000);
    assert!(after.iter().all(|&l| l <= 40), "no climb on the stale baseline: {after:?}");
    assert!((32..=35).contains(&limit.limit()), "and kept it after: {}", limit.limit());
}

#[test]
fn the_limit_steps_by_whole_requests_and_holds_one_over_a_small_origin() {
    // In the bench the loaded round trip carried the gateway's own work
    // (0.3 to 0.6 ms over the probe's 21.2 ms), so C + 1 read a queue of
    // 1.2 to 1.5; a fractional step from 16.8 tried 18 for a window.
    // A probe that read 0.7 ms high (3%: the bench's probes read 21.1 to
    // 21.9 ms) had C + 1 read a queue under alpha and C + 2 one under
    // beta; the shortest of the recent probes is not fooled by one.
    for (loaded_us, probe_us) in [(0, 0), (300, 0), (600, 0), (800, 0), (1500, 0), (0, 700), (0, 1000)] {
        let mut limit = AdaptiveLimit::new(4, 512);
        let mut origin = Origin { loaded_us, probe_us, ..Origin::new(16, 21_200) };
        let seen = origin.run(&mut limit, OVERLOAD, 40_000);
        let settled = &seen[50..];
        let at_17 = settled.iter().filter(|&&l| l == 17).count() as f64 / settled.len() as f64;
        assert!(settled.iter().all(|l| (16..=17).contains(l)), "{loaded_us} µs: {settled:?}");
        // Past about 0.7 ms the work reads as a queue of 1.5 at C + 1: the
        // limit holds C instead, still the knee.
        let at_17_min = if loaded_us <= 600 { 0.9 } else { 0.0 };
        assert!(at_17 >= at_17_min, "{loaded_us} µs: at C + 1 in {at_17:.2} of the windows");
    }
}

#[test]
fn a_phase_under_the_capacity_leaves_the_limit_at_the_knee() {
    // The 2026-12-04 overload bench alternated 10 s at half the origin's
    // capacity with 10 s at three times it: the limit grew to 36 in the
    // calm (any window that used half of it and saw no queue grew it) and
    // read 18 or 19 in the first second of the next overload.
    let mut limit = AdaptiveLimit::new(4, 512);
    let mut origin = Origin::new(16, 20_000);
    origin.run(&mut limit, OVERLOAD, 10_000);
    assert!((16..=17).contains(&limit.limit()), "settled at {}", limit.limit());
    // Demand under the capacity, with bursts to the limit and past it.
    for (window, demand) in [8, 12, 17, 10, 16, 6, 18, 11].iter().cycle().take(200).enumerate() {
        for seen in origin.run(&mut limit, *demand, WINDOW_MS) {
            assert!((16..=17).contains(&seen), "window {window} of the calm: {seen}");
        }
    }
    let overload = origin.run(&mut limit, OVERLOAD, 2_000);
    assert!(overload.iter().all(|l| (16..=17).contains(l)), "the next overload: {overload:?}");
    // The origin grows to 100 at once while the demand asks for 30: the
    // limit holds the demand back, sees no queue, and grows to let it by.
    origin.capacity = 100;
    origin.run(&mut limit, 30, 10_000);
    assert!(limit.limit() >= 30, "a wider origin is followed: {}", limit.limit());
}

#[test]
fn an_idle_origin_does_not_grow_the_limit_and_the_bounds_hold() {
    let mut limit = AdaptiveLimit::new(4, 50);
    let mut origin = Origin::new(1000, 1_000);
    origin.run(&mut limit, 2, 10_000);
    assert_eq!(limit.limit(), AUTO_INITIAL, "two in flight never need more than twenty");
    origin.run(&mut limit, OVERLOAD, 10_000);
    assert_eq!(limit.limit(), 50, "the ceiling holds");
    // An origin that serves one at a time, under the floor of 4: the probe
    // cannot go below the floor, so the limit stays just above it.
    origin.capacity = 1;
    origin.run(&mut limit, OVERLOAD, 30_000);
    assert!((4..=6).contains(&limit.limit()), "the floor holds: {}", limit.limit());
}

#[test]
fn a_window_needs_time_and_samples() {
    let mut limit = AdaptiveLimit::new(1, 100);
    assert!(limit.probing(), "the first window measures the bare round trip");
    assert_eq!(limit.limit(), 5, "at a quarter of the initial limit");
    assert_eq!(limit.sample(0, 100, 20), None, "a sample from before the probe is ignored");
    for _ in 0..WINDOW_SAMPLES_MIN {
        assert_eq!(limit.sample(0, 100, 5), None, "a window lasts WINDOW_MS");
    }
    assert_eq!(limit.sample(WINDOW_MS, 100, 5), Some(20), "the probe ends");
    assert_eq!(limit.sample(WINDOW_MS * 2, 100, 20), None);
    assert_eq!(limit.sample(WINDOW_MS * 5, 100, 20), None, "short of samples");
    let mut changed = None;
    for _ in 0..WINDOW_SAMPLES_MIN {
        changed = changed.or(limit.sample(WINDOW_MS * 5, 100, 20));
    }
    assert_eq!(changed, Some(24), "no queue: the limit grows by its square root");
}

enum Step {
    Push(u64, Result<u64, QueueRefusal>),
    Pop(Option<u32>),
    Remove(u64, Option<u32>),
    Len(usize),
    Front(Option<u32>),
}

fn check(capacity: usize, share: usize, steps: &[Step]) {
    let mut queue = FairQueue::new(capacity, share);
    let mut item = 0u32;
    for (index, step) in steps.iter().enumerate() {
        match step {
            Step::Push(identity, expected) => {
                assert_eq!(queue.push(*identity, item), *expected, "step {index}");
                item += 1;
            }
            Step::Pop(expected) => assert_eq!(queue.pop(), *expected, "step {index}"),
            Step::Remove(ticket, expected) => assert_eq!(queue.remove(*ticket), *expected, "step {index}"),
            Step::Len(expected) => assert_eq!(queue.len(), *expected, "step {index}"),
            Step::Front(expected) => assert_eq!(queue.front().copied(), *expected, "step {index}"),
        }
    }
}

#[test]
fn the_queue_is_fifo_bounded_and_shared_fairly() {
    use QueueRefusal::*;
    use Step::*;
    // One identity holds at most its share; others still get in.
    check(4, 2, &[Push(1, Ok(0)), Push(1, Ok(1)), Push(1, Err(Share)), Push(2, Ok(2)), Push(3, Ok(3))]);
    // The capacity binds everyone; first in, first out.
    check(2, 2, &[Push(1, Ok(0)), Push(2, Ok(1)), Push(3, Err(Full)), Pop(Some(0)), Push(3, Ok(2)), Pop(Some(1))]);
    // A waiter that gives up leaves from the middle; its place and share free.
    check(
        3,
        1,
        &[
            Push(1, Ok(0)),
            Push(2, Ok(1)),
            Push(3, Ok(2)),
            Front(Some(0)),
            Remove(1, Some(1)),
            Remove(1, None),
            Len(2),
            Push(2, Ok(3)),
            Pop(Some(0)),
            Front(Some(2)),
            Pop(Some(2)),
            Pop(Some(3)),
            Pop(None),
            Front(None),
            Remove(7, None),
        ],
    );
    // Removing the front compacts; tickets stay unique.
    check(
        2,
        2,
        &[Push(1, Ok(0)), Remove(0, Some(0)), Push(1, Ok(1)), Push(1, Ok(2)), Pop(Some(1)), Remove(2, Some(2))],
    );
}

#[test]
fn retries_stay_within_the_budget_over_a_sliding_window() {
    let mut budget = RetryBudget::new(20);
    // A quiet origin still gets the minimum.
    assert!((0..RETRIES_MIN).all(|_| budget.try_retry(0)));
    assert!(!budget.try_retry(0));
    for _ in 0..100 {
        budget.request(500);
    }
    // 100 requests: 20 retries in the window, the 3 spent included.
    assert_eq!((0..30).filter(|_| budget.try_retry(600)).count(), 17);
    // A window later the old buckets are gone.
    assert!(!budget.try_retry(RETRY_WINDOW_MS - 1));
    assert!(budget.try_retry(RETRY_WINDOW_MS + 1000));
    let mut none = RetryBudget::new(0);
    assert_eq!((0..10).filter(|_| none.try_retry(0)).count() as u64, RETRIES_MIN);
}

#[test]
fn with_jittered_latency_the_limit_still_finds_the_capacity() {
    // (capacity, share of settled windows within [C, 1.1 C] at least).
    for (capacity, share_min) in [(16, 0.5), (32, 0.9), (100, 0.9), (400, 0.9)] {
        let mut limit = AdaptiveLimit::new(1, 1000);
        let mut origin = Origin { jitter_percent: 10, ..Origin::new(capacity, 20_000) };
        let seen = origin.run(&mut limit, OVERLOAD, 60_000);
        let settled = &seen[150..];
        let c = f64::from(capacity);
        let inside = settled.iter().filter(|&&l| (c..=c * 1.1).contains(&f64::from(l))).count();
        let share = inside as f64 / settled.len() as f64;
        let (low, high) = bounds(settled);
        assert!(share >= share_min, "capacity {capacity}: {share:.2} of windows within 10%, {low}..={high}");
        assert!(f64::from(low) >= c * 0.9, "capacity {capacity}: fell to {low}");
        assert!(f64::from(high) <= c * 1.25, "capacity {capacity}: rose to {high}");
    }
}
