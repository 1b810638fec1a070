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
/// completions before the caller goes on; for a task that hands out a
/// burst of work (the writers one group commit made durable) and must not
/// hold back requests that arrived meanwhile.
///
/// Why not [`YieldNow`]: with `DEFER_TASKRUN`, completions are reaped only
/// when the run queue is empty and the loop parks (monoio's submit between
/// tasks does not ask the kernel for events), so a yield runs the queued
/// tasks but sees no new requests. On io_uring the caller instead waits for
/// a read that is bound to complete at once (a byte it has just written to
/// its own socket pair, [`install_io_poke`]): the loop runs the queued
/// tasks, parks, finds that completion together with every other one, and
/// the caller goes on. A timer does not do this: monoio's timer counts
/// whole milliseconds and fires an already-due timer without parking when
/// the loop parked within the current millisecond, so a burst looked for
/// I/O once a millisecond, and a request arriving during it waited up to
/// 1 ms (the GET p99 of the disk-overload bench). Where the poke is not
/// installed (epoll, or it failed) the timer remains the fallback.
pub async fn poll_io() {
    monoio::spawn(async {}).await;
    let poke = IO_POKE.with(|poke| poke.borrow_mut().take());
    if let Some(mut poke) = poke {
        let done = poke.round_trip().await;
        IO_POKE.with(|slot| *slot.borrow_mut() = Some(poke));
        if done {
            return;
        }
    }
    let now = Instant::now();
    let due = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
    monoio::time::sleep_until(due.into()).await;
}

thread_local! {
    static IO_POKE: std::cell::RefCell<Option<IoPoke>> = const { std::cell::RefCell::new(None) };
}

/// A connected socket pair owned by one core: a byte written to `tx` makes
/// a read of `rx` complete at once, which gets the loop to park and reap.
struct IoPoke {
    tx: std::os::unix::net::UnixStream,
    rx: monoio::net::UnixStream,
    buf: Option<Vec<u8>>,
}

impl IoPoke {
    /// One byte there and back; false when the socket failed (the caller
    /// falls back to the timer).
    async fn round_trip(&mut self) -> bool {
        use monoio::io::AsyncReadRent;
        use std::io::Write;
        if (&self.tx).write(&[1]).is_err() {
            return false;
        }
        let buf = self.buf.take().unwrap_or_else(|| Vec::with_capacity(1));
        let (read, mut buf) = self.rx.read(buf).await;
        buf.clear();
        self.buf = Some(buf);
        matches!(read, Ok(1))
    }
}

/// Gives the calling core (an io_uring event loop) the socket pair that
/// [`poll_io`] reads to look for I/O; not for epoll, where monoio's read
/// may finish without parking.
pub fn install_io_poke() -> io::Result<()> {
    let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    let rx = monoio::net::UnixStream::from_std(rx)?;
    IO_POKE.with(|slot| *slot.borrow_mut() = Some(IoPoke { tx, rx, buf: None }));
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use monoio::io::AsyncReadRent;

    use super::*;

    /// A request that arrives while a task hands out a burst of work is
    /// read at the burst's next `poll_io`, not a millisecond later: the
    /// poke makes the loop park and reap at once, whatever the clock says.
    #[test]
    fn poll_io_reaps_waiting_completions_at_once() {
        let flags = match driver::probe_uring() {
            Ok(flags) => flags,
            Err(reason) => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED poll_io_reaps_waiting_completions_at_once: {reason}");
                return;
            }
        };
        let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(driver::uring_builder(flags))
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(async {
            install_io_poke().unwrap();
            let (peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut ours = monoio::net::UnixStream::from_std(ours).unwrap();
            let arrived_at = Rc::new(Cell::new(None));
            let arrived = Rc::clone(&arrived_at);
            let step = Rc::new(Cell::new(0u32));
            let steps = Rc::clone(&step);
            monoio::spawn(async move {
                let (read, _) = ours.read(Vec::with_capacity(1)).await;
                assert_eq!(read.unwrap(), 1);
                arrived.set(Some(steps.get()));
            });
            // The reader has submitted its read; the request comes in.
            monoio::spawn(async {}).await;
            std::io::Write::write_all(&mut &peer, b"x").unwrap();
            // A burst: work that never parks on its own, in slices.
            for slice in 0..100 {
                step.set(slice);
                let started = Instant::now();
                while started.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
                poll_io().await;
                if arrived_at.get().is_some() {
                    break;
                }
            }
            let seen = arrived_at.get().expect("the request was read during the burst");
            assert!(seen <= 1, "the request was read at the first poll_io (seen after slice {seen})");
        });
    }
}
