//! A core's side of its shard's log: the append buffer, group commit, and
//! waiting for durability.
//!
//! Appends go to `pending`. The flusher task hands all of `pending` to the
//! shard's I/O thread as one job, at most one job at a time: while a job is
//! on disk the next group forms (group commit). A job leaves as soon as a
//! sync writer waits on it, else when the oldest pending byte is
//! `--flush-interval` old. The completion task wakes the writers whose
//! records are now durable and sends deferred replies of forwarded sync
//! writes.
//!
//! Segment rolls are decided at append time by the [`SegmentBook`] (so each
//! record's segment is known at once, for compaction); a job never spans a
//! roll: it ends at the next roll, and the job after it starts the new
//! segment.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use shardgate_shards::compaction::{Location, SegmentBook};
use shardgate_shards::kv::Outcome;
use shardgate_shards::record::Record;

use super::error::Refusal;
use super::segments::{FlushJob, Flushed};
use crate::config::Durability;
use crate::runtime::poll_io;

/// Capacity the append buffer keeps across flushes.
const PENDING_BYTES_KEPT_MAX: usize = 4 << 20;

/// A forwarded sync write's reply, held until its record is durable.
struct Deferred {
    end: u64,
    source: u32,
    token: u32,
    outcome: Outcome,
}

/// Writers woken (or deferred replies sent) before the loop looks for new
/// requests again: a group commit can make hundreds of sync writes durable
/// at once, and answering them all in one run of the queue kept requests
/// that arrived meanwhile waiting ~4 ms (the disk-overload bench: 220
/// writers per commit at ~20 µs each). A request that arrives during the
/// burst waits for the rest of one slice: each answer costs ~10 µs with
/// its loopback send, so the GET p99 under the disk-overload bench was
/// 0.78 ms with 32 per slice and 0.47 ms with 8 (paired rounds,
/// bench/results/2026-12-04-disk-overload.md); each slice costs one
/// `poll_io` round trip (a few µs).
const WAKES_PER_SLICE: usize = 8;

/// Sync writes of one shard that may wait for their group commit; more
/// are refused with 503 at once.
pub const SYNC_WAITERS_MAX: usize = 4096;

/// The bounds of what waits for the log: its unflushed bytes, and how long
/// a group commit may stay outstanding before sync writes are turned away.
#[derive(Clone, Copy, Debug)]
pub struct LogBounds {
    pub backlog_bytes_max: usize,
    pub disk_queue_timeout: Duration,
}

pub struct CoreLog {
    pub durability: Durability,
    flush_interval: Duration,
    backlog_bytes_max: usize,
    disk_queue_timeout: Duration,
    /// When the job the I/O thread holds was handed over.
    in_flight_since: Option<Instant>,
    pending: Vec<u8>,
    /// Log offset of `pending[0]`.
    pending_start: u64,
    /// End offset of the job the I/O thread holds.
    in_flight_end: Option<u64>,
    first_pending_at: Option<Instant>,
    /// A writer waits for `pending`: flush without waiting for the interval.
    sync_wanted: bool,
    sequence: u64,
    jobs: mpsc::SyncSender<FlushJob>,
    flushed: Arc<Flushed>,
    waiters: Vec<(u64, Waker)>,
    deferred: Vec<Deferred>,
    flusher: Option<Waker>,
    /// Which bytes of which segment are still needed.
    pub book: SegmentBook,
    /// Offsets where appended, not yet flushed records start a new segment.
    rolls: VecDeque<u64>,
}

impl CoreLog {
    /// A log that takes no writes: the placeholder a core holds while its
    /// shard recovers (writes are refused until every shard is ready).
    pub fn unused() -> CoreLog {
        let (jobs, _nobody) = mpsc::sync_channel(1);
        let book = SegmentBook::new(1 << 20, 0);
        let bounds = LogBounds { backlog_bytes_max: 0, disk_queue_timeout: Duration::from_secs(1) };
        CoreLog::new(Durability::Async, Duration::from_millis(5), bounds, book, 0, jobs, Arc::default())
    }

    pub fn new(
        durability: Durability,
        flush_interval: Duration,
        bounds: LogBounds,
        book: SegmentBook,
        sequence_max: u64,
        jobs: mpsc::SyncSender<FlushJob>,
        flushed: Arc<Flushed>,
    ) -> CoreLog {
        let end = book.end();
        CoreLog {
            book,
            rolls: VecDeque::new(),
            durability,
            flush_interval,
            backlog_bytes_max: bounds.backlog_bytes_max,
            disk_queue_timeout: bounds.disk_queue_timeout,
            in_flight_since: None,
            pending: Vec::new(),
            pending_start: end,
            in_flight_end: None,
            first_pending_at: None,
            sync_wanted: false,
            sequence: sequence_max,
            jobs,
            flushed,
            waiters: Vec::new(),
            deferred: Vec::new(),
            flusher: None,
        }
    }

    /// Why a write cannot be taken now, if it cannot: the disk fails
    /// writes, or the unflushed backlog is full; for a `sync` write also:
    /// [`SYNC_WAITERS_MAX`] sync writes wait, or the oldest bytes not yet
    /// durable have waited `--disk-queue-timeout` (the disk is behind, and
    /// a new sync write would wait longer still).
    pub fn refusal(&self, sync: bool) -> Option<Refusal> {
        if self.flushed.failed.load(Ordering::Acquire) {
            return Some(Refusal::DiskFailing);
        }
        let backlog = self.appended_end() - self.durable_end();
        if backlog as usize >= self.backlog_bytes_max {
            return Some(Refusal::BacklogFull);
        }
        if !sync {
            return None;
        }
        if self.waiters.len() + self.deferred.len() >= SYNC_WAITERS_MAX {
            return Some(Refusal::SyncWaitersFull);
        }
        let oldest = match (self.in_flight_since, self.first_pending_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if oldest.is_some_and(|since| since.elapsed() >= self.disk_queue_timeout) {
            return Some(Refusal::SyncTimeout);
        }
        // Little's law on bytes: at the disk's measured write rate, the
        // backlog ahead would keep a new sync write waiting half the
        // deadline or more.
        let rate = self.flushed.bytes_per_s.load(Ordering::Relaxed);
        if rate > 0 && backlog * 1000 / rate >= self.disk_queue_timeout.as_millis() as u64 / 2 {
            return Some(Refusal::SyncTimeout);
        }
        None
    }

    pub fn durable_end(&self) -> u64 {
        self.flushed.durable_end.load(Ordering::Acquire)
    }

    fn appended_end(&self) -> u64 {
        self.pending_start + self.pending.len() as u64
    }

    /// Offset of the next record appended.
    pub fn next_offset(&self) -> u64 {
        self.appended_end()
    }

    /// Appends a record (its `sequence` is assigned here) and returns where
    /// it sits. `live`: the record is needed (a put) rather than a tombstone.
    pub fn append(&mut self, mut record: Record<'_>, live: bool, now: Instant) -> Location {
        self.sequence += 1;
        record.sequence = self.sequence;
        let (location, rolled) = self.book.append(record.encoded_bytes() as u32, live);
        assert_eq!(location.offset, self.appended_end(), "the book and the buffer agree");
        if rolled {
            self.rolls.push_back(location.offset);
        }
        record.encode(&mut self.pending);
        self.first_pending_at.get_or_insert(now);
        if let Some(waker) = self.flusher.take() {
            waker.wake();
        }
        location
    }

    /// Holds a forwarded sync write's reply until `end` is durable.
    pub fn defer_reply(&mut self, end: u64, source: u32, token: u32, outcome: Outcome) {
        self.deferred.push(Deferred { end, source, token, outcome });
        self.want_sync();
    }

    fn want_sync(&mut self) {
        self.sync_wanted = true;
        if let Some(waker) = self.flusher.take() {
            waker.wake();
        }
    }

    /// Frees the flusher once its job is durable up to `seen`, and takes the
    /// writers and deferred replies that `seen` covers; the caller hands
    /// them out.
    fn take_durable(&mut self, seen: u64) -> (Vec<Waker>, Vec<Deferred>) {
        if self.in_flight_end.is_some_and(|end| end <= seen) {
            self.in_flight_end = None;
            self.in_flight_since = None;
            if let Some(waker) = self.flusher.take() {
                waker.wake();
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|(end, _)| *end <= seen);
        self.waiters = waiting;
        let waiters = done.into_iter().map(|(_, waker)| waker).collect();
        let (deferred, waiting): (Vec<_>, Vec<_>) = self.deferred.drain(..).partition(|d| d.end <= seen);
        self.deferred = waiting;
        if !self.deferred.is_empty() || !self.waiters.is_empty() {
            self.want_sync();
        }
        (waiters, deferred)
    }

    /// True when everything appended is durable.
    pub fn settled(&self) -> bool {
        self.pending.is_empty() && self.in_flight_end.is_none() && self.deferred.is_empty()
    }
}

/// Resolves once the log is durable up to `end`.
pub struct DurableFuture {
    log: Rc<RefCell<CoreLog>>,
    end: u64,
}

impl DurableFuture {
    pub fn new(log: &Rc<RefCell<CoreLog>>, end: u64) -> DurableFuture {
        DurableFuture { log: Rc::clone(log), end }
    }
}

impl Future for DurableFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut log = self.log.borrow_mut();
        if log.durable_end() >= self.end {
            return Poll::Ready(());
        }
        log.waiters.push((self.end, cx.waker().clone()));
        log.want_sync();
        Poll::Pending
    }
}

/// Hands pending bytes to the I/O thread, one job at a time.
pub async fn flusher(log: Rc<RefCell<CoreLog>>) {
    loop {
        poll_fn(|cx| {
            let mut state = log.borrow_mut();
            if !state.pending.is_empty() && state.in_flight_end.is_none() {
                Poll::Ready(())
            } else {
                state.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let deadline = {
            let state = log.borrow();
            state.first_pending_at.expect("pending bytes have a time") + state.flush_interval
        };
        // Let the group form until the interval passes, unless a writer waits.
        let wait_for_sync = poll_fn(|cx| {
            let mut state = log.borrow_mut();
            if state.sync_wanted {
                Poll::Ready(())
            } else {
                state.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        monoio::select! {
            _ = monoio::time::sleep_until(deadline.into()) => {},
            _ = wait_for_sync => {},
        }
        let mut state = log.borrow_mut();
        let start = state.pending_start;
        let new_segment = state.rolls.front() == Some(&start);
        if new_segment {
            state.rolls.pop_front();
        }
        // A job ends where the next segment begins.
        let bytes = match state.rolls.front() {
            Some(&roll) => {
                let rest = state.pending.split_off((roll - start) as usize);
                std::mem::replace(&mut state.pending, rest)
            }
            // Keep the buffer's size for the next group, up to a bound:
            // growing it again from empty would copy megabytes per doubling
            // on the loop, while keeping a burst's size forever wastes memory.
            None => {
                let capacity = state.pending.capacity().min(PENDING_BYTES_KEPT_MAX);
                std::mem::replace(&mut state.pending, Vec::with_capacity(capacity))
            }
        };
        state.pending_start += bytes.len() as u64;
        state.in_flight_end = Some(state.pending_start);
        state.in_flight_since = Some(Instant::now());
        if state.pending.is_empty() {
            state.first_pending_at = None;
            state.sync_wanted = false;
        }
        let sent = state.jobs.try_send(FlushJob { start, bytes, new_segment });
        assert!(sent.is_ok(), "one flush job at a time");
    }
}

/// Reacts to each finished flush: wakes durable writers, hands deferred
/// replies to `reply` (source core, token, outcome), frees the flusher for
/// the next group.
pub async fn completions(log: Rc<RefCell<CoreLog>>, reply: impl Fn(u32, u32, Outcome)) {
    let mut seen = log.borrow().durable_end();
    loop {
        let flushed = Arc::clone(&log.borrow().flushed);
        poll_fn(|cx| {
            flushed.waker.register(cx.waker());
            if flushed.durable_end.load(Ordering::Acquire) != seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        seen = log.borrow().durable_end();
        let (ready_waiters, ready) = log.borrow_mut().take_durable(seen);
        let mut handed = 0;
        for waker in ready_waiters {
            if handed > 0 && handed % WAKES_PER_SLICE == 0 {
                poll_io().await;
            }
            waker.wake();
            handed += 1;
        }
        for deferred in ready {
            if handed > 0 && handed % WAKES_PER_SLICE == 0 {
                poll_io().await;
            }
            reply(deferred.source, deferred.token, deferred.outcome);
            handed += 1;
        }
    }
}

/// Flushes everything appended and waits until it is durable (shutdown).
pub async fn settle(log: &Rc<RefCell<CoreLog>>) {
    let end = log.borrow().appended_end();
    DurableFuture::new(log, end).await;
    while !log.borrow().settled() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}
