//! Open-loop schedules: when each request is due.
//!
//! A [`RateProfile`] is a piecewise-constant arrival rate over time (a
//! steady rate, or a base rate with bursts). Request `k` (counting from 0
//! over all connections) is due when the profile's cumulative count of
//! arrivals reaches `k`. Requests are handed to connections round-robin, so
//! connection `j` of `C` sends requests `j, j + C, j + 2C, ...`. Latency is
//! measured from the due time, not from when the request could be sent: a
//! stalled server cannot hide its stall by slowing the generator down
//! (coordinated omission; wrk2's approach).

use std::time::Duration;

/// One constant-rate stretch of a profile.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    start: Duration,
    rate: f64,
    /// Requests due before `start`.
    issued_before: f64,
}

/// A piecewise-constant arrival rate over `[0, duration)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateProfile {
    steps: Vec<Step>,
    duration: Duration,
}

/// A stretch at a multiple of the base rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Burst {
    pub at: Duration,
    pub length: Duration,
    pub multiplier: f64,
}

impl RateProfile {
    /// A base rate with bursts; bursts must not overlap and must fit.
    pub fn new(base_rate: f64, duration: Duration, bursts: &[Burst]) -> Result<RateProfile, String> {
        if !(base_rate > 0.0 && base_rate.is_finite()) {
            return Err(format!("rate must be positive, got {base_rate}"));
        }
        let mut changes = vec![(Duration::ZERO, base_rate)];
        let mut sorted = bursts.to_vec();
        sorted.sort_by_key(|b| b.at);
        for burst in &sorted {
            let end = burst.at + burst.length;
            if burst.multiplier <= 0.0 || burst.length.is_zero() {
                return Err("a burst needs a positive multiplier and length".to_string());
            }
            if end > duration || burst.at < changes.last().expect("non-empty").0 {
                return Err("bursts must not overlap and must end within the duration".to_string());
            }
            changes.push((burst.at, base_rate * burst.multiplier));
            if end < duration {
                changes.push((end, base_rate));
            }
        }
        let mut steps: Vec<Step> = Vec::with_capacity(changes.len());
        for (start, rate) in changes {
            let issued_before = match steps.last() {
                None => 0.0,
                Some(previous) => previous.issued_before + previous.rate * (start - previous.start).as_secs_f64(),
            };
            // A burst starting at 0 replaces the base step.
            if steps.last().is_some_and(|s| s.start == start) {
                steps.pop();
            }
            steps.push(Step { start, rate, issued_before });
        }
        Ok(RateProfile { steps, duration })
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The arrival rate at time `t`.
    pub fn rate_at(&self, t: Duration) -> f64 {
        self.step_at(t).rate
    }

    fn step_at(&self, t: Duration) -> &Step {
        let index = self.steps.partition_point(|s| s.start <= t).saturating_sub(1);
        &self.steps[index]
    }

    /// Requests due in `[0, duration)`.
    pub fn total(&self) -> u64 {
        let last = self.steps.last().expect("non-empty");
        (last.issued_before + last.rate * (self.duration - last.start).as_secs_f64()).ceil() as u64
    }

    /// When request `k` is due, or `None` past the end of the profile.
    pub fn due(&self, k: u64) -> Option<Duration> {
        let k = k as f64;
        let index = self.steps.partition_point(|s| s.issued_before <= k).saturating_sub(1);
        let step = &self.steps[index];
        let offset = Duration::from_secs_f64((k - step.issued_before) / step.rate);
        let due = step.start + offset;
        (due < self.duration).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_rate_spaces_requests_evenly() {
        let profile = RateProfile::new(1000.0, Duration::from_secs(2), &[]).unwrap();
        assert_eq!(profile.total(), 2000);
        assert_eq!(profile.due(0), Some(ms(0)));
        assert_eq!(profile.due(1), Some(ms(1)));
        assert_eq!(profile.due(1500), Some(ms(1500)));
        assert_eq!(profile.due(1999), Some(ms(1999)));
        assert_eq!(profile.due(2000), None);
    }

    #[test]
    fn burst_steps_up_and_back() {
        // 100/s for 10 s with an 8x burst from 2 s to 4 s.
        let burst = Burst { at: Duration::from_secs(2), length: Duration::from_secs(2), multiplier: 8.0 };
        let profile = RateProfile::new(100.0, Duration::from_secs(10), &[burst]).unwrap();
        assert_eq!(profile.rate_at(ms(1999)), 100.0);
        assert_eq!(profile.rate_at(ms(2000)), 800.0);
        assert_eq!(profile.rate_at(ms(3999)), 800.0);
        assert_eq!(profile.rate_at(ms(4000)), 100.0);
        // 200 before the burst, 1600 in it, 600 after.
        assert_eq!(profile.total(), 2400);
        assert_eq!(profile.due(199), Some(ms(1990)));
        assert_eq!(profile.due(200), Some(ms(2000)));
        let in_burst = profile.due(201).unwrap();
        assert!((in_burst.as_secs_f64() - 2.00125).abs() < 1e-9, "{in_burst:?}");
        assert_eq!(profile.due(1800), Some(ms(4000)));
        assert_eq!(profile.due(1801), Some(ms(4010)));
        assert_eq!(profile.due(2400), None);
        // Due times never go backwards.
        let times: Vec<Duration> = (0..2400).map(|k| profile.due(k).unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn burst_at_the_start_and_bad_profiles() {
        let burst = Burst { at: Duration::ZERO, length: Duration::from_secs(1), multiplier: 20.0 };
        let profile = RateProfile::new(10.0, Duration::from_secs(2), &[burst]).unwrap();
        assert_eq!(profile.rate_at(Duration::ZERO), 200.0);
        assert_eq!(profile.total(), 210);
        let late = Burst { at: Duration::from_secs(5), length: Duration::from_secs(1), multiplier: 2.0 };
        assert!(RateProfile::new(10.0, Duration::from_secs(2), &[late]).is_err());
        assert!(RateProfile::new(0.0, Duration::from_secs(2), &[]).is_err());
        let a = Burst { at: Duration::from_secs(1), length: Duration::from_secs(2), multiplier: 2.0 };
        let b = Burst { at: Duration::from_secs(2), length: Duration::from_secs(1), multiplier: 2.0 };
        assert!(RateProfile::new(10.0, Duration::from_secs(5), &[a, b]).is_err());
    }
}
