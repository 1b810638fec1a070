//! The event-loop stall detector, in the spirit of Seastar's reactor stall
//! detector: a core marks when it starts and ends a stretch of work (a
//! batch of requests, a mailbox drain, a compaction step, a tick), and one
//! watchdog thread for the process looks every [`CHECK_INTERVAL`]; a stretch
//! that has run for over [`STALL_THRESHOLD`] is a stall: counted, timed when
//! it ends, and logged (at most once a second per shard).
//!
//! Marking costs two relaxed atomic stores per stretch and the cores never
//! wake for it; a timer probe on each loop (the first design) cost 20% of a
//! core at 23,000 requests/s on the development VM, because every wake-up
//! of a parked io_uring loop is a system call and a context switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logging;
use crate::metrics::Metrics;

/// How often the watchdog looks.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(2);
/// A stretch of work longer than this is a stall.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(10);
/// At most one warning line per shard per interval; the counter counts all.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// When each core's current stretch of work began, in microseconds since
/// the watchdog's epoch (0: idle).
pub struct Heartbeats {
    epoch: Instant,
    busy_since_us: Box<[AtomicU64]>,
}

impl Heartbeats {
    pub fn new(shard_count: u32) -> Heartbeats {
        Heartbeats { epoch: Instant::now(), busy_since_us: (0..shard_count).map(|_| AtomicU64::new(0)).collect() }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Marks `shard` busy until the returned guard drops.
    pub fn busy(&self, shard: u32) -> Busy<'_> {
        let slot = &self.busy_since_us[shard as usize];
        slot.store(self.now_us(), Ordering::Relaxed);
        Busy { slot }
    }
}

/// A stretch of work on a core; ends when dropped.
pub struct Busy<'a> {
    slot: &'a AtomicU64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot.store(0, Ordering::Relaxed);
    }
}

/// One shard as the watchdog last saw it.
#[derive(Clone, Copy, Default)]
struct Watch {
    /// The stretch already counted as a stall (its start), if any.
    counted: u64,
    /// The latest time that stretch was seen still running.
    seen_until: u64,
    warned_at: Option<Instant>,
}

/// Starts the watchdog thread; it runs for the life of the process.
pub fn spawn(metrics: Arc<Metrics>) -> std::io::Result<()> {
    std::thread::Builder::new().name("shardgate-watchdog".to_string()).spawn(move || {
        let heartbeats = &metrics.heartbeats;
        let mut watches = vec![Watch::default(); heartbeats.busy_since_us.len()];
        loop {
            std::thread::sleep(CHECK_INTERVAL);
            let now = heartbeats.now_us();
            for (shard, watch) in watches.iter_mut().enumerate() {
                let since = heartbeats.busy_since_us[shard].load(Ordering::Relaxed);
                check(shard as u32, since, now, watch, &metrics);
            }
        }
    })?;
    Ok(())
}

/// Counts a stretch once it passes the threshold and times it when it ends.
fn check(shard: u32, since: u64, now: u64, watch: &mut Watch, metrics: &Metrics) {
    if watch.counted != 0 && since != watch.counted {
        // The counted stretch ended: record how long it ran, at least.
        metrics.shard(shard).stall_ended(watch.seen_until - watch.counted);
        watch.counted = 0;
    }
    if since == 0 || now.saturating_sub(since) <= STALL_THRESHOLD.as_micros() as u64 {
        return;
    }
    watch.seen_until = now;
    if watch.counted == since {
        return;
    }
    watch.counted = since;
    let stalls = metrics.shard(shard).stall_started();
    if watch.warned_at.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
        watch.warned_at = Some(Instant::now());
        let blocked_ms = (now - since) / 1000;
        logging::warn("event loop stall", &[("shard", &shard), ("blocked_ms", &blocked_ms), ("stalls_total", &stalls)]);
    }
}
