//! The rate limiter's error against an exact sliding log, on a generated
//! trace of steady and bursty clients (`shardgate-bench ratelimit-accuracy`).
//!
//! Each approximate limiter runs over the trace and decides every request.
//! Alongside, an exact log of the requests *that limiter admitted* counts,
//! at each request, how many it really admitted in the trailing window.
//! Comparing on the same history isolates the estimate's error from the
//! drift two independent limiters would accumulate. Reported per limiter:
//!
//! - count error: mean of |estimate − exact count| / limit over requests
//!   (Cloudflare's "average difference between real and approximate rate");
//! - wrong decisions: requests the exact log would have decided otherwise;
//! - worst window: the most requests admitted in any trailing window, as a
//!   multiple of the limit (over-admission at its worst);
//! - admitted vs exact: total admitted relative to an exact sliding-log
//!   limiter run independently on the same trace.

use std::collections::VecDeque;
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use shardgate_shards::ratelimit::{Policy, Window};

/// One client's request times, milliseconds.
pub struct ClientTrace {
    pub kind: &'static str,
    pub times_ms: Vec<u64>,
}

/// Steady Poisson clients at 0.5x–4x the limit, and bursty on/off clients
/// that send a burst of 0.5x–3x the limit at random moments.
pub fn generate(policy: Policy, windows: u64, seed: u64) -> Vec<ClientTrace> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let duration_ms = policy.window_ms * windows;
    let rate_per_ms = f64::from(policy.limit) / policy.window_ms as f64;
    let mut clients = Vec::new();
    for factor in [0.5, 0.9, 1.0, 1.1, 1.5, 2.0, 4.0] {
        let gap = Exp::new(rate_per_ms * factor).expect("positive rate");
        let mut times_ms = Vec::new();
        let mut t = 0.0;
        while t < duration_ms as f64 {
            times_ms.push(t as u64);
            t += gap.sample(&mut rng);
        }
        clients.push(ClientTrace { kind: "steady", times_ms });
    }
    for burst_factor in [0.5, 1.0, 2.0, 3.0] {
        for _ in 0..3 {
            let mut times_ms = Vec::new();
            let mut t = rng.random_range(0..policy.window_ms);
            while t < duration_ms {
                let burst = (f64::from(policy.limit) * burst_factor) as u64;
                let spread_ms = rng.random_range(1..=policy.window_ms / 4);
                for i in 0..burst {
                    times_ms.push(t + i * spread_ms / burst.max(1));
                }
                t += rng.random_range(policy.window_ms / 2..=policy.window_ms * 3);
            }
            times_ms.sort_unstable();
            clients.push(ClientTrace { kind: "bursty", times_ms });
        }
    }
    clients
}

/// An exact sliding log: admits when fewer than `limit` admissions fall in
/// the trailing window (`(now - window, now]`).
struct ExactLog {
    admitted_ms: VecDeque<u64>,
}

impl ExactLog {
    fn count(&mut self, now_ms: u64, policy: Policy) -> u64 {
        while self.admitted_ms.front().is_some_and(|&t| t + policy.window_ms <= now_ms) {
            self.admitted_ms.pop_front();
        }
        self.admitted_ms.len() as u64
    }
}

/// One limiter's figures over the whole trace.
#[derive(Clone, Debug, Default)]
pub struct Accuracy {
    pub requests: u64,
    pub count_error_sum: f64,
    pub wrong: u64,
    pub worst_window: f64,
    pub admitted: u64,
    pub admitted_exact: u64,
}

impl Accuracy {
    pub fn count_error(&self) -> f64 {
        self.count_error_sum / self.requests.max(1) as f64
    }
}

/// Runs a `Window<N>` over every client of the trace.
pub fn measure<const N: usize>(policy: Policy, trace: &[ClientTrace]) -> Accuracy {
    let mut acc = Accuracy::default();
    let limit = f64::from(policy.limit);
    for client in trace {
        let mut window = Window::<N>::default();
        let mut shadow = ExactLog { admitted_ms: VecDeque::new() };
        let mut exact = ExactLog { admitted_ms: VecDeque::new() };
        for &now_ms in &client.times_ms {
            acc.requests += 1;
            let estimate = window.estimate(now_ms, policy);
            let real = shadow.count(now_ms, policy);
            acc.count_error_sum += (estimate as f64 - real as f64).abs() / limit;
            let admitted = window.acquire(now_ms, policy, 1).granted == 1;
            if admitted != (real < u64::from(policy.limit)) {
                acc.wrong += 1;
            }
            if admitted {
                acc.admitted += 1;
                shadow.admitted_ms.push_back(now_ms);
                let in_window = shadow.count(now_ms, policy) as f64;
                acc.worst_window = acc.worst_window.max(in_window / limit);
            }
            if exact.count(now_ms, policy) < u64::from(policy.limit) {
                exact.admitted_ms.push_back(now_ms);
                acc.admitted_exact += 1;
            }
        }
    }
    acc
}

/// The Markdown report for the sub-window counts compared.
pub fn report(policy: Policy, windows: u64, seed: u64) -> String {
    let trace = generate(policy, windows, seed);
    let requests: usize = trace.iter().map(|c| c.times_ms.len()).sum();
    let rows = [
        ("2 (two-window counter)", measure::<2>(policy, &trace)),
        ("3", measure::<3>(policy, &trace)),
        ("5", measure::<5>(policy, &trace)),
        ("9 (shardgate)", measure::<9>(policy, &trace)),
        ("17", measure::<17>(policy, &trace)),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Trace: {} clients (7 steady Poisson at 0.5x-4x the limit, 12 bursty on/off), {requests} requests, \
         limit {}/{} ms, {windows} windows, seed {seed}.\n",
        trace.len(),
        policy.limit,
        policy.window_ms
    );
    let _ =
        writeln!(out, "| counters (N) | count error (mean) | wrong decisions | worst window | admitted vs exact log |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, a) in rows {
        let _ = writeln!(
            out,
            "| {name} | {:.2}% | {:.3}% | {:.3}x limit | {:.4} |",
            a.count_error() * 100.0,
            a.wrong as f64 * 100.0 / a.requests.max(1) as f64,
            a.worst_window,
            a.admitted as f64 / a.admitted_exact.max(1) as f64
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_log_admits_exactly_the_limit_per_window() {
        let policy = Policy::new(10, 1000).expect("valid");
        let trace = vec![ClientTrace { kind: "steady", times_ms: (0..5000).collect() }];
        let a = measure::<5>(policy, &trace);
        // One request per ms for 5 s: the exact log admits 10 per window.
        assert_eq!(a.admitted_exact, 50);
        assert!(a.worst_window <= 1.5, "{}", a.worst_window);
    }

    #[test]
    fn more_sub_windows_err_less_on_this_trace() {
        let policy = Policy::new(100, 10_000).expect("valid");
        let trace = generate(policy, 30, 7);
        let two = measure::<2>(policy, &trace);
        let five = measure::<5>(policy, &trace);
        assert!(five.count_error() < two.count_error(), "{} vs {}", five.count_error(), two.count_error());
    }
}
