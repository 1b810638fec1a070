//! The event-loop stall detector, in the spirit of Seastar's reactor stall
//! detector: a core marks each stretch of work (a batch of requests, a
//! mailbox drain, a compaction step, a tick) with a guard; when a stretch
//! ends after more than [`STALL_THRESHOLD`] the core counts it, records its
//! length and logs a warning (at most once a second per shard). A stretch
//! that never ends (a hang) is reported by one watchdog thread that looks
//! every [`HANG_CHECK_INTERVAL`].
//!
//! This costs two clock reads per stretch and no wake-ups. Two earlier
//! designs were measured and dropped: a 2 ms timer probe on every loop (its
//! wake-ups cost 15-20% more CPU per request at 23,150 requests/s) and a
//! watchdog thread polling every 2 ms (its wake-ups, counted in the
//! server's CPU, doubled CPU per request at 1,157 requests/s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::logging;
use super::metrics::Metrics;

/// A stretch of work longer than this is a stall.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(10);
/// How often the watchdog thread looks for a stretch that has not ended.
pub const HANG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// At most one warning line per shard per interval; the counter counts all.
const WARN_INTERVAL_US: u64 = 1_000_000;

/// When each core's current stretch of work began, in microseconds since
/// the epoch (0: idle), and when it last warned.
pub struct Heartbeats {
    epoch: Instant,
    busy_since_us: Box<[AtomicU64]>,
    warned_at_us: Box<[AtomicU64]>,
}

impl Heartbeats {
    pub fn new(shard_count: u32) -> Heartbeats {
        let slots = || (0..shard_count).map(|_| AtomicU64::new(0)).collect();
        Heartbeats { epoch: Instant::now(), busy_since_us: slots(), warned_at_us: slots() }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Marks a stretch of work on `shard`; it ends when the guard drops.
    pub fn busy<'a>(&'a self, shard: u32, metrics: &'a Metrics) -> Busy<'a> {
        let started_us = self.now_us();
        self.busy_since_us[shard as usize].store(started_us, Ordering::Relaxed);
        Busy { heartbeats: self, metrics, shard, started_us }
    }
}

/// A stretch of work on a core; measured when dropped.
pub struct Busy<'a> {
    heartbeats: &'a Heartbeats,
    metrics: &'a Metrics,
    shard: u32,
    started_us: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let shard = self.shard as usize;
        self.heartbeats.busy_since_us[shard].store(0, Ordering::Relaxed);
        let now_us = self.heartbeats.now_us();
        let blocked_us = now_us.saturating_sub(self.started_us);
        if blocked_us <= STALL_THRESHOLD.as_micros() as u64 {
            return;
        }
        let stalls = self.metrics.shard(self.shard).stall(blocked_us);
        let warned_at = &self.heartbeats.warned_at_us[shard];
        let warned = warned_at.load(Ordering::Relaxed);
        if warned == 0 || now_us.saturating_sub(warned) >= WARN_INTERVAL_US {
            warned_at.store(now_us, Ordering::Relaxed);
            let blocked_ms = blocked_us / 1000;
            logging::warn(
                "event loop stall",
                &[("shard", &self.shard), ("blocked_ms", &blocked_ms), ("stalls_total", &stalls)],
            );
        }
    }
}

/// How long a core has been busy when that is a hang (at least one check
/// interval); None when it is idle (`since` 0) or busy for less. A core
/// may start a busy stretch after the watchdog read `now_us`: `since` is
/// then later than `now_us`, which is no hang (before 2026-12-04 the
/// subtraction overflowed, aborting a debug build).
fn hung_for(now_us: u64, since: u64) -> Option<u64> {
    let blocked_us = now_us.saturating_sub(since);
    (since != 0 && blocked_us >= HANG_CHECK_INTERVAL.as_micros() as u64).then_some(blocked_us)
}

/// Starts the hang watchdog; it runs for the life of the process.
pub fn spawn(heartbeats: Arc<Heartbeats>) -> std::io::Result<()> {
    std::thread::Builder::new().name("shardgate-watchdog".to_string()).spawn(move || {
        let mut reported = vec![0u64; heartbeats.busy_since_us.len()];
        loop {
            std::thread::sleep(HANG_CHECK_INTERVAL);
            let now_us = heartbeats.now_us();
            for (shard, reported) in reported.iter_mut().enumerate() {
                let since = heartbeats.busy_since_us[shard].load(Ordering::Relaxed);
                let Some(blocked_us) = hung_for(now_us, since) else {
                    continue;
                };
                if *reported != since {
                    *reported = since;
                    let blocked_ms = blocked_us / 1000;
                    logging::error(
                        "event loop blocked and still running",
                        &[("shard", &shard), ("blocked_ms", &blocked_ms)],
                    );
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hang_is_a_busy_stretch_of_at_least_one_interval() {
        let interval = HANG_CHECK_INTERVAL.as_micros() as u64;
        let cases = [
            // (now, busy since, hung for)
            (10 * interval, 0, None),                          // idle
            (10 * interval, 10 * interval - 1, None),          // busy for 1 µs
            (10 * interval, 9 * interval, Some(interval)),     // one interval
            (10 * interval, 5 * interval, Some(5 * interval)), // five
            (10 * interval, 10 * interval + 7, None),          // started after `now` was read
        ];
        for (now, since, expected) in cases {
            assert_eq!(hung_for(now, since), expected, "now {now}, since {since}");
        }
    }
}
