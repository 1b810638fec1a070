use super::*;

#[test]
fn opens_after_threshold_consecutive_failures_only() {
    let mut breaker = Breaker::new(3, 1000);
    breaker.record(0, false, false);
    breaker.record(0, false, false);
    breaker.record(0, true, false); // A success resets the count.
    breaker.record(0, false, false);
    breaker.record(0, false, false);
    assert_eq!(breaker.admit(1), Admit::Yes);
    breaker.record(1, false, false);
    assert_eq!(breaker.state(1), BreakerState::Open);
    assert_eq!(breaker.admit(500), Admit::No);
    assert_eq!(breaker.opened(), 1);
}

#[test]
fn half_open_admits_one_probe_and_its_result_decides() {
    let mut breaker = Breaker::new(1, 1000);
    breaker.record(0, false, false);
    assert_eq!(breaker.admit(999), Admit::No);
    assert_eq!(breaker.state(1000), BreakerState::HalfOpen);
    assert_eq!(breaker.admit(1000), Admit::Probe);
    assert_eq!(breaker.admit(1001), Admit::No, "one probe at a time");
    breaker.record(1002, false, true);
    assert_eq!(breaker.state(1500), BreakerState::Open, "a failed probe opens it again");
    assert_eq!(breaker.admit(2002), Admit::Probe);
    breaker.record(2003, true, true);
    assert_eq!(breaker.state(2003), BreakerState::Closed);
    assert_eq!(breaker.admit(2004), Admit::Yes);
    assert_eq!(breaker.opened(), 2);
}

#[test]
fn late_results_of_requests_admitted_before_opening_do_not_close_it() {
    let mut breaker = Breaker::new(1, 1000);
    breaker.record(0, false, false);
    breaker.record(1, true, false); // Admitted while closed, answered after.
    assert_eq!(breaker.state(1), BreakerState::Open);
    let mut breaker = Breaker::new(1, 1000);
    breaker.record(0, false, false);
    assert_eq!(breaker.admit(1000), Admit::Probe);
    breaker.probe_abandoned();
    assert_eq!(breaker.admit(1001), Admit::Probe, "an abandoned probe frees the slot");
}

#[test]
fn threshold_zero_never_opens() {
    let mut breaker = Breaker::new(0, 1000);
    for now in 0..100 {
        breaker.record(now, false, false);
    }
    assert_eq!(breaker.admit(100), Admit::Yes);
}
