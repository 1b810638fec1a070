use super::*;

const LEASE_POLICY: Policy = Policy { limit: 100, window_ms: 1000 };

fn policy(limit: u32, window_ms: u64) -> Policy {
    Policy::new(limit, window_ms).expect("valid policy")
}

/// Spends `n` single permits at `now_ms`; returns how many were granted.
fn spend<const N: usize>(window: &mut Window<N>, now_ms: u64, p: Policy, n: u32) -> u32 {
    (0..n).map(|_| window.acquire(now_ms, p, 1).granted).sum()
}

#[test]
fn policy_bounds() {
    assert_eq!(Policy::new(0, 1000), None);
    assert_eq!(Policy::new(1, 0), None);
    assert_eq!(Policy::new(1, WINDOW_MS_MAX + 1), None);
    assert_eq!(policy(100, 1500).window_s(), 2);
}

#[test]
fn two_window_counter_is_cloudflares_formula() {
    // 42 requests in the previous minute, 18 in this one, 15 s into it:
    // 18 + 42 × 45/60 = 49.5 → 49 counted.
    let p = policy(100, 60_000);
    let mut w = Window::<2>::default();
    assert_eq!(spend(&mut w, 60_000, p, 42), 42);
    assert_eq!(spend(&mut w, 120_000, p, 18), 18);
    assert_eq!(w.estimate(135_000, p), 49);
    let d = w.acquire(135_000, p, 1000);
    assert_eq!(d.granted, 50, "100 - 49.5 leaves room for 50");
    assert_eq!(d.remaining, 0);
}

#[test]
fn a_burst_at_a_boundary_is_not_admitted_twice() {
    // A fixed window would admit 10 at 999 ms and 10 more at 1000 ms.
    let p = policy(10, 1000);
    let mut w = RateWindow::default();
    assert_eq!(spend(&mut w, 999, p, 11), 10);
    let refused = w.acquire(1000, p, 1);
    assert_eq!(refused.granted, 0);
    // The 10 sit in bucket [875, 1000) (8 buckets of 125 ms). It becomes
    // the oldest at 1875 and slides out linearly; one slot is free once
    // 1/10 of it has left: 12.5 → 13 ms into the bucket → 1888 ms.
    assert_eq!(refused.retry_after_ms, 888);
    assert_eq!(w.acquire(1887, p, 1).granted, 0);
    assert_eq!(w.acquire(1888, p, 1).granted, 1);
}

#[test]
fn retry_after_is_exact_for_the_two_window_counter() {
    let p = policy(4, 1000);
    let mut w = Window::<2>::default();
    assert_eq!(spend(&mut w, 1000, p, 4), 4);
    let refused = w.acquire(1500, p, 1);
    assert_eq!(refused.granted, 0);
    // Next window: 4 × (1000 - e)/1000 ≤ 3 → e ≥ 250 → t = 2250.
    assert_eq!(refused.retry_after_ms, 750);
    assert_eq!(w.acquire(2249, p, 1).granted, 0);
    assert_eq!(w.acquire(2250, p, 1).granted, 1);
}

#[test]
fn retry_after_matches_the_first_admitted_millisecond() {
    // For many shapes of history, the promised wait is the first moment a
    // request is admitted: not earlier (a lie) and not later (a waste).
    for seed in 0..200u64 {
        let p = policy(1 + (seed % 13) as u32, 100 + seed * 37 % 900);
        let mut w = RateWindow::default();
        let mut now = 10_000 + seed * 7;
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        loop {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            now += (state >> 33) % (p.window_ms / 3 + 1);
            let d = w.acquire(now, p, 1);
            if d.granted == 0 {
                let at = now + d.retry_after_ms;
                let mut probe = w;
                assert_eq!(probe.acquire(at, p, 1).granted, 1, "seed {seed}: admitted at the promised time");
                if at > now {
                    let mut early = w;
                    assert_eq!(early.acquire(at - 1, p, 1).granted, 0, "seed {seed}: not admitted before it");
                }
                break;
            }
        }
    }
}

#[test]
fn long_idle_forgets_everything() {
    let p = policy(3, 1000);
    let mut w = RateWindow::default();
    assert_eq!(spend(&mut w, 5_000, p, 5), 3);
    assert_eq!(w.acquire(5_999, p, 1).granted, 0);
    assert_eq!(spend(&mut w, 1_000_000, p, 5), 3);
    assert_eq!(w.estimate(1_000_000, p), 3);
}

#[test]
fn a_clock_going_back_keeps_the_count() {
    let p = policy(3, 1000);
    let mut w = RateWindow::default();
    assert_eq!(spend(&mut w, 5_000, p, 3), 3);
    assert_eq!(w.acquire(4_000, p, 1).granted, 0);
}

#[test]
fn partial_grants_and_give_back() {
    let p = policy(10, 1000);
    let mut w = RateWindow::default();
    let d = w.acquire(0, p, 8);
    assert_eq!((d.granted, d.remaining), (8, 2));
    let d = w.acquire(1, p, 8);
    assert_eq!((d.granted, d.remaining), (2, 0));
    w.give_back(2, p, 5, 1);
    assert_eq!(w.estimate(2, p), 5);
    // Giving back more than was counted saturates at zero.
    w.give_back(3, p, 100, 1);
    assert_eq!(w.estimate(3, p), 0);
    // Permits go back to the bucket that counted them, and only while it
    // is in the window.
    assert_eq!(w.acquire(500, p, 4).granted, 4);
    assert_eq!(w.acquire(700, p, 4).granted, 4);
    w.give_back(800, p, 3, 500);
    assert_eq!(w.estimate(800, p), 5);
    w.give_back(2_000, p, 3, 700);
    assert_eq!(w.estimate(2_000, p), 0);
}

#[test]
fn reset_counts_to_the_end_of_the_current_bucket() {
    let p = policy(10, 1000); // buckets of 125 ms
    let mut w = RateWindow::default();
    assert_eq!(w.acquire(1_100, p, 1).reset_ms, 25);
    assert_eq!(w.acquire(1_124, p, 1).reset_ms, 1);
}

#[test]
fn limiter_keeps_identities_and_classes_apart() {
    let p = policy(2, 1000);
    let mut l = Limiter::new(16, 1000);
    assert_eq!(l.acquire(0, 7, Class::All, p, 5).granted, 2);
    assert_eq!(l.acquire(0, 7, Class::All, p, 1).granted, 0);
    assert_eq!(l.acquire(0, 7, Class::Writes, p, 1).granted, 1);
    assert_eq!(l.acquire(0, 8, Class::All, p, 1).granted, 1);
    assert_eq!(l.tracked(), 3);
    l.give_back(1, Unused { identity: 7, class: Class::All, policy: p, permits: 1, charged_ms: 0 });
    assert_eq!(l.acquire(1, 7, Class::All, p, 1).granted, 1);
    // Give-back to an identity never seen is a no-op.
    l.give_back(1, Unused { identity: 99, class: Class::All, policy: p, permits: 1, charged_ms: 0 });
    assert_eq!(l.tracked(), 3);
}

#[test]
fn eviction_prefers_idle_then_one_shot_identities() {
    let p = policy(1000, 1000);
    let mut l = Limiter::new(4, 1000);
    // 1 and 2 come back (referenced); 3 and 4 are one-shot.
    for id in 1..=4 {
        l.acquire(0, id, Class::All, p, 1);
    }
    for id in 1..=2 {
        l.acquire(10, id, Class::All, p, 1);
    }
    l.acquire(20, 5, Class::All, p, 1);
    l.acquire(20, 6, Class::All, p, 1);
    assert_eq!(l.tracked(), 4);
    assert_eq!(l.stats, LimiterStats { evicted_idle: 0, evicted_active: 2 });
    // 1 and 2 kept their counts (2 each): their windows were not reset.
    assert_eq!(l.acquire(30, 1, Class::All, p, 1000).granted, 998);
    assert_eq!(l.acquire(30, 2, Class::All, p, 1000).granted, 998);
    // Long after, everyone is idle: the next newcomer takes an idle slot.
    l.acquire(5_000, 7, Class::All, p, 1);
    assert_eq!(l.stats.evicted_idle, 1);
}

#[test]
fn a_flood_of_new_identities_stays_within_capacity() {
    let p = policy(10, 1000);
    let mut l = Limiter::new(1000, 1000);
    for id in 0..100_000u64 {
        assert_eq!(l.acquire(id / 100, id, Class::All, p, 1).granted, 1);
    }
    assert_eq!(l.tracked(), 1000);
    assert_eq!(l.stats.evicted_idle + l.stats.evicted_active, 99_000);
}

fn send(leases: &mut Leases, now_ms: u64, identity: u64) -> AskPlan {
    let mut unused = Vec::new();
    let plan = leases.ask(now_ms, identity, Class::All, LEASE_POLICY, 64, &mut unused);
    assert!(unused.is_empty(), "{unused:?}");
    plan
}

#[test]
fn lease_spend_expire_and_refusal() {
    let mut leases = Leases::new(8);
    assert_eq!(leases.spend(0, 1, Class::All), LeaseCheck::Ask);
    assert!(!leases.can_decide(0, 1, Class::All));
    assert_eq!(send(&mut leases, 0, 1), AskPlan::Send { want: 1 });
    // A second connection on the core follows the request in flight.
    assert_eq!(send(&mut leases, 0, 1), AskPlan::Follow);
    assert!(leases.is_asking(1, Class::All));
    let grant = Decision { granted: 2, remaining: 5, reset_ms: 100, retry_after_ms: 0 };
    leases.grant(0, 1, Class::All, grant, 50);
    assert!(!leases.is_asking(1, Class::All));
    assert!(leases.can_decide(10, 1, Class::All));
    assert_eq!(leases.spend(10, 1, Class::All), LeaseCheck::Allowed { remaining: 6, reset_ms: 90 });
    assert_eq!(leases.spend(20, 1, Class::All), LeaseCheck::Allowed { remaining: 5, reset_ms: 80 });
    assert_eq!(leases.spend(30, 1, Class::All), LeaseCheck::Ask);

    // Spent before expiry: the next request asks for twice as many.
    assert_eq!(send(&mut leases, 30, 1), AskPlan::Send { want: 2 });
    // A refusal is remembered until its retry time, then the core asks again.
    let refusal = Decision { granted: 0, remaining: 0, reset_ms: 100, retry_after_ms: 40 };
    leases.grant(30, 1, Class::All, refusal, 50);
    assert_eq!(leases.spend(40, 1, Class::All), LeaseCheck::Refused { retry_after_ms: 30 });
    assert_eq!(leases.spend(70, 1, Class::All), LeaseCheck::Ask);

    // Unused permits of an expired lease come back once, and the entry goes.
    let mut unused = Vec::new();
    assert_eq!(leases.ask(100, 2, Class::Writes, LEASE_POLICY, 64, &mut unused), AskPlan::Send { want: 1 });
    leases.grant(100, 2, Class::Writes, grant, 50);
    assert_eq!(leases.spend(120, 2, Class::Writes), LeaseCheck::Allowed { remaining: 6, reset_ms: 80 });
    assert_eq!(leases.expire(149, &mut unused), 1, "lease 1 is long expired");
    assert!(unused.is_empty());
    assert_eq!(leases.expire(150, &mut unused), 1);
    assert_eq!(
        unused,
        vec![Unused { identity: 2, class: Class::Writes, policy: LEASE_POLICY, permits: 1, charged_ms: 100 }]
    );
    assert!(leases.is_empty());
}

#[test]
fn lease_size_adapts_to_demand() {
    let mut leases = Leases::new(8);
    let mut want = match send(&mut leases, 0, 1) {
        AskPlan::Send { want } => want,
        other => panic!("{other:?}"),
    };
    let mut now = 0;
    let mut asks = 1;
    // A hot client: every lease is spent at once, so sizes double to the cap.
    for _ in 0..200 {
        leases.grant(
            now,
            1,
            Class::All,
            Decision { granted: want, remaining: 1000, reset_ms: 10, retry_after_ms: 0 },
            50,
        );
        while matches!(leases.spend(now, 1, Class::All), LeaseCheck::Allowed { .. }) {}
        now += 1;
        want = match send(&mut leases, now, 1) {
            AskPlan::Send { want } => want,
            other => panic!("{other:?}"),
        };
        asks += 1;
    }
    assert_eq!(want, 64);
    assert!(asks < 210);
    // An idle one: a lease that expires unused halves the next.
    leases.grant(now, 1, Class::All, Decision { granted: want, remaining: 1000, reset_ms: 10, retry_after_ms: 0 }, 50);
    let mut unused = Vec::new();
    assert_eq!(leases.ask(now + 100, 1, Class::All, LEASE_POLICY, 64, &mut unused), AskPlan::Send { want: 32 });
    assert_eq!(unused.len(), 1);
    assert_eq!(unused[0].permits, 64);
}

#[test]
fn overlapping_grants_add_up() {
    let mut leases = Leases::new(8);
    send(&mut leases, 0, 1);
    let grant = Decision { granted: 3, remaining: 0, reset_ms: 10, retry_after_ms: 0 };
    leases.grant(0, 1, Class::All, grant, 50);
    leases.grant(1, 1, Class::All, grant, 50);
    let allowed = (0..10).filter(|_| matches!(leases.spend(2, 1, Class::All), LeaseCheck::Allowed { .. })).count();
    assert_eq!(allowed, 6);
}

#[test]
fn leases_are_bounded_and_asking_entries_stay() {
    let mut leases = Leases::new(4);
    let grant = Decision { granted: 1, remaining: 0, reset_ms: 10, retry_after_ms: 0 };
    let mut unused = Vec::new();
    for id in 0..100 {
        assert_eq!(leases.ask(0, id, Class::All, LEASE_POLICY, 64, &mut unused), AskPlan::Send { want: 1 });
        leases.grant(0, id, Class::All, grant, 50);
    }
    assert_eq!(leases.len(), 4);
    assert_eq!(unused.len(), 96, "every evicted lease gives its permit back");
    // Four requests in flight fill the table: a fifth identity is shed.
    let mut leases = Leases::new(4);
    for id in 0..4 {
        leases.ask(0, id, Class::All, LEASE_POLICY, 64, &mut unused);
    }
    assert_eq!(leases.ask(0, 9, Class::All, LEASE_POLICY, 64, &mut unused), AskPlan::Full);
    assert_eq!(leases.expire(1_000_000, &mut unused), 0, "entries waiting for an answer never expire");
    leases.cancel_ask(0, Class::All);
    assert_eq!(leases.ask(0, 9, Class::All, LEASE_POLICY, 64, &mut unused), AskPlan::Send { want: 1 });
}
