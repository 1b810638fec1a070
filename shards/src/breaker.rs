//! A circuit breaker per origin (Envoy's consecutive-failure outlier
//! detection, with Hystrix's half-open probe): after `threshold`
//! consecutive failures the circuit opens and requests fail at once; after
//! `open_ms` one probe request is let through; its success closes the
//! circuit, its failure opens it again. Time comes in as `now_ms`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value /metrics shows: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Whether a request may go to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe: report its result with `probe = true`.
    Probe,
    No,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    open_ms: u64,
    failures: u32,
    state: BreakerState,
    opened_at_ms: u64,
    probe_in_flight: bool,
    opened: u64,
}

impl Breaker {
    /// `threshold` of 0 disables the breaker (it never opens).
    pub fn new(threshold: u32, open_ms: u64) -> Breaker {
        Breaker {
            threshold,
            open_ms,
            failures: 0,
            state: BreakerState::Closed,
            opened_at_ms: 0,
            probe_in_flight: false,
            opened: 0,
        }
    }

    /// The state as of `now_ms` (an open circuit whose wait is over reads
    /// half-open).
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.state {
            BreakerState::Open if now_ms >= self.opened_at_ms + self.open_ms => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// Times the circuit opened.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    pub fn admit(&mut self, now_ms: u64) -> Admit {
        match self.state(now_ms) {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open => Admit::No,
            BreakerState::HalfOpen if self.probe_in_flight => Admit::No,
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Admit::Probe
            }
        }
    }

    /// Records a request's result. `probe` says it was admitted as the probe.
    pub fn record(&mut self, now_ms: u64, success: bool, probe: bool) {
        if probe {
            self.probe_in_flight = false;
        }
        if success {
            self.failures = 0;
            if probe || self.state == BreakerState::Closed {
                self.state = BreakerState::Closed;
            }
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let trips =
            probe || (self.state == BreakerState::Closed && self.threshold > 0 && self.failures >= self.threshold);
        if trips {
            self.state = BreakerState::Open;
            self.opened_at_ms = now_ms;
            self.opened += 1;
        }
    }

    /// A probe was admitted but never ran to a result (its request was
    /// cancelled): let another probe through.
    pub fn probe_abandoned(&mut self) {
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests;
