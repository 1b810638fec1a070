//! The runtime layer: what every core runs on, knowing nothing of HTTP,
//! the key-value API or the gateway.
//!
//! - [`access_log`]: the access log and its writer thread.
//! - [`driver`]: io_uring probe and driver choice.
//! - [`listener`]: the per-core `SO_REUSEPORT` listeners.
//! - [`fds`]: the descriptor table, grown once at start.
//! - [`mesh`]: the bounded cross-core mailboxes, generic over their messages.
//! - [`offload`]: work handed to another thread, awaited through a waker.
//! - [`slots`]: an origin's process-wide in-flight count and limit, with
//!   a wake-up per core.
//! - [`metrics`]: per-shard counters and the Prometheus rendering (a leaf).
//! - [`watchdog`]: the event-loop stall detector.
//! - [`logging`]: structured log lines (key=value text or JSON).
//!
//! Also here: pinning a thread to a CPU, the wall clock in milliseconds,
//! a one-shot yield to the scheduler, and a yield that lets the loop look
//! for I/O.

pub mod access_log;
pub mod driver;
pub mod fds;
pub mod listener;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod offload;
pub mod slots;
pub mod watchdog;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lets the tasks queued now run, then lets the event loop look for I/O
/// completions unless it looked within the current millisecond; for a
/// task that hands out a burst of work (the writers one group commit made
/// durable) and must not hold back requests that arrived meanwhile.
///
/// Why not [`YieldNow`]: with `DEFER_TASKRUN`, completions are reaped only
/// when the run queue is empty and the loop parks (monoio's submit between
/// tasks does not ask the kernel for events), so a yield runs the queued
/// tasks but sees no new requests. Two steps instead: awaiting a spawned
/// no-op task puts the caller behind every task queued now (a task that
/// wakes itself is re-queued at the front); then a timer that is already
/// due makes the next park a zero-timeout wait for events, after which
/// monoio fires it. monoio's timer counts whole milliseconds: when the loop
/// parked within the current one, the timer fires at once and the caller
/// goes on without waiting.
pub async fn poll_io() {
    monoio::spawn(async {}).await;
    let now = Instant::now();
    let due = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
    monoio::time::sleep_until(due.into()).await;
}

/// Yields once to the scheduler so other tasks run.
pub struct YieldNow(bool);

impl YieldNow {
    pub fn new() -> YieldNow {
        YieldNow(false)
    }
}

impl Default for YieldNow {
    fn default() -> Self {
        YieldNow::new()
    }
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
