use super::*;

/// Drives `limit` against a simulated origin that serves `capacity`
/// requests at once in `base_us` each and queues the rest (a connection
/// pool): with L in flight a request takes `base × max(1, L / capacity)`.
/// The limiter is kept saturated; one window per step. Returns the limit
/// after each window that did not end in a probe (a probe's limit is a
/// quarter of the limit by design).
fn drive(limit: &mut AdaptiveLimit, now_ms: &mut u64, capacity: u32, base_us: u64, windows: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    for _ in 0..windows {
        let in_flight = limit.limit();
        let rtt = base_us * u64::from(in_flight.max(capacity)) / u64::from(capacity);
        for _ in 0..WINDOW_SAMPLES_MIN {
            limit.sample(*now_ms, rtt, in_flight);
        }
        *now_ms += WINDOW_MS;
        limit.sample(*now_ms, rtt, in_flight);
        if !limit.probing() {
            seen.push(limit.limit());
        }
    }
    seen
}

#[test]
fn the_limit_settles_within_ten_percent_over_the_origins_capacity() {
    for capacity in [4, 8, 32, 100, 400] {
        let mut limit = AdaptiveLimit::new(1, 1000);
        let mut now = 0;
        let seen = drive(&mut limit, &mut now, capacity, 20_000, 300);
        let settled = &seen[seen.len() - 100..];
        let (low, high) = (settled.iter().min().unwrap(), settled.iter().max().unwrap());
        assert!(*low >= capacity, "capacity {capacity}: fell to {low}");
        let bound = (f64::from(capacity) * 1.1).max(f64::from(capacity) + 2.0);
        assert!(f64::from(*high) <= bound, "capacity {capacity}: rose to {high} (bound {bound})");
    }
}

#[test]
fn a_brown_out_lowers_the_limit_and_recovery_raises_it_again() {
    let mut limit = AdaptiveLimit::new(2, 1000);
    let mut now = 0;
    drive(&mut limit, &mut now, 32, 20_000, 200);
    let before = limit.limit();
    let slow = drive(&mut limit, &mut now, 32, 500_000, 5);
    assert!(*slow.iter().min().unwrap() < before / 2, "the limit follows the latency down: {slow:?}");
    // The next probe shows the slow latency to be the bare one; the limit climbs back.
    let windows = (PROBE_INTERVAL_MS / WINDOW_MS) as usize + 50;
    drive(&mut limit, &mut now, 32, 500_000, windows);
    assert!(limit.limit() >= 32 && limit.limit() <= 35, "re-learnt the capacity: {}", limit.limit());
    // The brown-out ends: the faster origin replaces the slow baseline at
    // once, so the limit does not climb past the capacity meanwhile.
    let after = drive(&mut limit, &mut now, 32, 20_000, 100);
    assert!(after.iter().all(|&l| l <= 40), "no climb on the stale baseline: {after:?}");
    assert!(limit.limit() >= 32 && limit.limit() <= 35, "and kept it after: {}", limit.limit());
}

#[test]
fn an_idle_origin_does_not_grow_the_limit_and_the_bounds_hold() {
    let mut limit = AdaptiveLimit::new(4, 50);
    for window in 0..100u64 {
        let in_flight = if limit.probing() { 1 } else { 2 };
        for _ in 0..=WINDOW_SAMPLES_MIN {
            limit.sample(window * WINDOW_MS, 1_000, in_flight);
        }
    }
    assert_eq!(limit.limit(), AUTO_INITIAL, "two in flight never need more than twenty");
    let mut now = 100 * WINDOW_MS;
    drive(&mut limit, &mut now, 1000, 1_000, 100);
    assert_eq!(limit.limit(), 50, "the ceiling holds");
    // An origin that serves one at a time, under the floor of 4: the probe
    // cannot go below the floor, so the limit stays just above it.
    drive(&mut limit, &mut now, 1, 1_000, 300);
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

/// As [`drive`], with each round trip off by up to ±`jitter_percent`
/// (a fixed pseudo-random sequence): a real origin's latency is never
/// flat, and a limiter that only settles on flat latency swings on a real one.
fn drive_jittered(limit: &mut AdaptiveLimit, now_ms: &mut u64, capacity: u32, jitter_percent: u64) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..600 {
        let in_flight = limit.limit();
        let base = 20_000 * u64::from(in_flight.max(capacity)) / u64::from(capacity);
        for _ in 0..=WINDOW_SAMPLES_MIN {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let off = (state >> 33) % (2 * jitter_percent + 1);
            let rtt = base * (100 + off - jitter_percent) / 100;
            limit.sample(*now_ms, rtt, in_flight);
            *now_ms += WINDOW_MS / u64::from(WINDOW_SAMPLES_MIN);
        }
        if !limit.probing() {
            seen.push(limit.limit());
        }
    }
    seen
}

#[test]
fn with_jittered_latency_the_limit_still_finds_the_capacity() {
    // (capacity, share of settled windows within [C, 1.1 C] at least).
    for (capacity, share_min) in [(16, 0.5), (32, 0.9), (100, 0.9), (400, 0.9)] {
        let mut limit = AdaptiveLimit::new(1, 1000);
        let mut now = 0;
        let seen = drive_jittered(&mut limit, &mut now, capacity, 10);
        let settled = &seen[150..];
        let c = f64::from(capacity);
        let inside = settled.iter().filter(|&&l| (c..=c * 1.1).contains(&f64::from(l))).count();
        let share = inside as f64 / settled.len() as f64;
        let (low, high) = (*settled.iter().min().unwrap(), *settled.iter().max().unwrap());
        assert!(share >= share_min, "capacity {capacity}: {share:.2} of windows within 10%, {low}..={high}");
        assert!(f64::from(low) >= c * 0.9, "capacity {capacity}: fell to {low}");
        assert!(f64::from(high) <= c * 1.25, "capacity {capacity}: rose to {high}");
    }
}
