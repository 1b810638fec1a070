//! Active health checks, one prober per origin for the whole process
//! (HAProxy's and Varnish's probe semantics): every `--origin-health-interval`
//! an HTTP `GET --origin-health-path` whose status must be 2xx or 3xx, or,
//! without a path, a TCP connect. An origin goes down after
//! [`FALL`] failed probes in a row and comes back after [`RISE`] good ones;
//! every core reads the verdict, so a dead origin is probed once, not once
//! per core. A change is logged and shown in `shardgate_origin_healthy`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::origin::parse_head;

use crate::config::OriginAddress;
use crate::runtime::logging;

/// Good probes in a row that bring a down origin back (HAProxy's `rise`).
pub const RISE: u32 = 2;
/// Failed probes in a row that take an up origin down (HAProxy's `fall`).
pub const FALL: u32 = 3;
/// Largest probe answer head read.
const PROBE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// One origin's health, shared by every core.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    interval_ms: AtomicU64,
    /// Probes so far (for the metrics and tests).
    probes: AtomicU64,
}

impl Health {
    /// An origin taken to be up until probes say otherwise.
    pub fn new(interval: Duration) -> Health {
        Health {
            up: AtomicBool::new(true),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
            probes: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a verdict.
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.load(Ordering::Relaxed)
    }

    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }
}

/// How to probe.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// `GET` this path; None: a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub connect_timeout: Duration,
    /// For the whole answer's head.
    pub timeout: Duration,
}

/// The rise/fall counter of one origin (HAProxy's): a verdict changes only
/// after enough probes in a row disagree with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub up: bool,
    /// Probes in a row that disagreed with `up`.
    streak: u32,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict { up: true, streak: 0 }
    }

    /// Records one probe; returns true when the verdict changed.
    pub fn record(&mut self, good: bool) -> bool {
        if good == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { FALL } else { RISE };
        if self.streak < needed {
            return false;
        }
        self.up = good;
        self.streak = 0;
        true
    }
}

impl Default for Verdict {
    fn default() -> Verdict {
        Verdict::new()
    }
}

/// Probes `origins` until `stop` says so; runs on one core for the
/// process. A changed verdict is logged.
pub async fn probe_loop(
    origins: Vec<(OriginAddress, std::sync::Arc<Health>)>,
    settings: ProbeSettings,
    stop: impl Fn() -> bool,
) {
    let mut verdicts = vec![Verdict::new(); origins.len()];
    while !stop() {
        monoio::time::sleep(settings.interval).await;
        for (index, (address, health)) in origins.iter().enumerate() {
            let good = probe(address, &settings).await;
            health.probes.fetch_add(1, Ordering::Relaxed);
            if verdicts[index].record(good) {
                let up = verdicts[index].up;
                health.set(up);
                let state: &dyn std::fmt::Display = if up { &"up" } else { &"down" };
                logging::warn("origin health changed", &[("origin", &address.url), ("state", state)]);
            }
        }
    }
}

/// One probe: a connect, then, with a path, a `GET` whose answer must be
/// 2xx or 3xx within the timeout.
async fn probe(address: &OriginAddress, settings: &ProbeSettings) -> bool {
    let connected = monoio::time::timeout(settings.connect_timeout, TcpStream::connect(address.address)).await;
    let Ok(Ok(mut stream)) = connected else {
        return false;
    };
    let Some(path) = &settings.path else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shardgate-health\r\nConnection: close\r\n\r\n",
        address.address
    );
    let exchange = async {
        let (written, _) = stream.write_all(request.into_bytes()).await;
        written.ok()?;
        let mut input = Vec::with_capacity(4096);
        loop {
            match parse_head(&mut input, false) {
                Ok(Some(head)) => return Some(head.response().status),
                Ok(None) => {}
                Err(_) => return None,
            }
            if input.len() >= PROBE_HEAD_BYTES_MAX {
                return None;
            }
            let buffer = vec![0u8; 4096];
            let (read, buffer) = stream.read(buffer).await;
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => input.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let status = monoio::time::timeout(settings.timeout, exchange).await.ok().flatten();
    status.is_some_and(|s| (200..400).contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_probes_in_a_row() {
        // (probe results, the verdict after each)
        let cases: [(&[bool], &[bool]); 4] = [
            (&[false, false, false], &[true, true, false]),
            (&[false, false, true, false, false, false], &[true, true, true, true, true, false]),
            (&[false, false, false, true, true], &[true, true, false, false, true]),
            (&[false, false, false, true, false, true, true], &[true, true, false, false, false, false, true]),
        ];
        for (probes, expect) in cases {
            let mut verdict = Verdict::new();
            let got: Vec<bool> = probes
                .iter()
                .map(|&good| {
                    verdict.record(good);
                    verdict.up
                })
                .collect();
            assert_eq!(got, expect, "{probes:?}");
        }
    }
}
