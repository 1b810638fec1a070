//! Background compaction of a shard's log (Bitcask's merge, one segment at
//! a time).
//!
//! The log's [`SegmentBook`](shardgate_shards::compaction::SegmentBook)
//! knows each segment's live bytes. When a sealed segment's dead share
//! reaches [`DEAD_RATIO_MIN`], the compactor reads it in chunks of
//! [`READ_CHUNK_BYTES`] on a helper thread (file I/O never runs on the
//! event loop) and walks its records in steps of at most [`STEP_BUDGET`],
//! pausing between steps so requests run:
//!
//! - a put that is still the key's current record is appended again at the
//!   head (same key, value, content type, timestamp and absolute expiry)
//!   and the key's entry is pointed at the copy (`Store::copy_forward`);
//! - a tombstone is copied forward while older segments may still hold the
//!   put it shadows, and dropped when its segment is the oldest;
//! - a put whose key has no live record any more (it expired, or was
//!   deleted) leaves a tombstone at the head unless its segment is the
//!   oldest: an older put of the same key must not come back at recovery;
//! - everything else (overwritten) is left behind.
//!
//! Once the copies are durable the segment file is deleted (unlink, then
//! fsync the directory). A crash before that leaves both the segment and
//! the copies; recovery lets the later copy win, which holds the same
//! value. At a dead share of 1/2, sealed segments hold at most twice the
//! live bytes.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shardgate_shards::compaction::Location;
use shardgate_shards::record::{self, DecodeError};

use super::segments::{hint_name, segment_name, sync_dir};
use super::store::Store;
use crate::runtime::metrics::Metrics;
use crate::runtime::watchdog::Heartbeats;
use crate::runtime::{logging, offload, unix_ms};

/// A sealed segment whose dead bytes reach this share is compacted.
pub const DEAD_RATIO_MIN: f64 = 0.5;
/// Longest stretch of compaction work between two chances for requests.
pub const STEP_BUDGET: Duration = Duration::from_micros(500);
/// Pause between steps: long enough for the loop to collect completions.
const STEP_PAUSE: Duration = Duration::from_millis(1);
/// Bytes of a segment read per helper-thread call.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// How often an idle compactor looks for a candidate.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether the compactor may work now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Work.
    Open,
    /// Not now (the server is not ready, writes are refused); look later.
    Closed,
    /// The core is shutting down: stop for good.
    Stop,
}

/// What the compactor of one shard works with.
pub struct Compactor {
    shard: u32,
    store: Rc<Store>,
    metrics: Arc<Metrics>,
    heartbeats: Arc<Heartbeats>,
    /// The thread that reads and deletes segments for this compactor.
    files: offload::Worker<offload::Job>,
}

/// File jobs a compactor queues at most (it waits for each).
const FILE_JOBS_MAX: usize = 1;

impl Compactor {
    pub fn new(shard: u32, store: Rc<Store>, metrics: Arc<Metrics>, heartbeats: Arc<Heartbeats>) -> io::Result<Self> {
        let files = offload::Worker::for_jobs(format!("shardgate-compact-{shard}"), FILE_JOBS_MAX)?;
        Ok(Compactor { shard, store, metrics, heartbeats, files })
    }

    /// Compacts the shard's segments while `gate` allows, until it says stop.
    pub async fn run(self, gate: impl Fn() -> Gate) {
        loop {
            monoio::time::sleep(CHECK_INTERVAL).await;
            let open = match gate() {
                Gate::Stop => return,
                Gate::Closed => false,
                Gate::Open => self.store.refusal(false).is_none(),
            };
            if !open {
                continue;
            }
            let candidate = self.store.log().borrow().book.candidate(DEAD_RATIO_MIN);
            if let Some(first) = candidate {
                if let Err(error) = self.compact_segment(first, &gate).await {
                    logging::error(
                        "compaction failed; will retry",
                        &[("shard", &self.shard), ("segment", &first), ("error", &error)],
                    );
                    monoio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn compact_segment(&self, first: u64, gate: &impl Fn() -> Gate) -> io::Result<()> {
        let started = Instant::now();
        let path: PathBuf = self.store.dir().join(segment_name(first));
        let segment_bytes = self.store.log().borrow().book.stats(first).expect("the candidate is known").bytes;
        let oldest = self.store.log().borrow().book.is_oldest(first);
        let mut copies_end = None;
        // The segment is read in chunks, so memory stays bounded.
        let mut position = 0u64;
        let mut want = READ_CHUNK_BYTES;
        while position < segment_bytes {
            let length = want.min((segment_bytes - position) as usize);
            let chunk = read_chunk(&self.files, &path, position, length).await?;
            let walked = self.walk(&chunk, position, segment_bytes, Walk { first, oldest }, gate).await?;
            let Some(walked) = walked else {
                return Ok(()); // Resumed later; the copies made so far are harmless.
            };
            copies_end = walked.copies_end.or(copies_end);
            want = walked.want;
            position += walked.consumed as u64;
        }
        if let Some(end) = copies_end {
            self.store.durable(end).await;
        }
        let stats = self.store.log().borrow().book.stats(first).expect("the candidate is known");
        if stats.live_bytes != 0 {
            return Err(io::Error::other(format!("{} live bytes left after copying", stats.live_bytes)));
        }
        remove_segment(&self.files, path, first).await?;
        self.store.log().borrow_mut().book.remove(first);
        self.metrics.shard(self.shard).compacted(stats.bytes);
        let millis = started.elapsed().as_millis();
        logging::info(
            "compacted",
            &[("shard", &self.shard), ("segment", &first), ("bytes", &stats.bytes), ("millis", &millis)],
        );
        Ok(())
    }

    /// Walks the records of one chunk (read at `position`) in bounded
    /// steps. None: the gate closed, stop for now.
    async fn walk(
        &self,
        chunk: &[u8],
        position: u64,
        segment_bytes: u64,
        segment: Walk,
        gate: &impl Fn() -> Gate,
    ) -> io::Result<Option<Walked>> {
        let mut walked = Walked { consumed: 0, want: READ_CHUNK_BYTES, copies_end: None };
        let mut need_more = false;
        while walked.consumed < chunk.len() && !need_more {
            if gate() != Gate::Open || self.store.refusal(false).is_some() {
                return Ok(None);
            }
            let step = Instant::now();
            let now_ms = unix_ms(SystemTime::now());
            let busy = self.heartbeats.busy(self.shard, &self.metrics);
            while walked.consumed < chunk.len() && step.elapsed() < STEP_BUDGET {
                let offset = walked.consumed;
                let (record, length) = match record::decode(&chunk[offset..]) {
                    Ok(decoded) => decoded,
                    // A record continues past the chunk: read on from its start.
                    Err(DecodeError::Truncated { needed, .. })
                        if position + (offset + needed) as u64 <= segment_bytes =>
                    {
                        walked.want = walked.want.max(needed);
                        need_more = true;
                        break;
                    }
                    Err(error) => {
                        // Recovery stepped over this bad record too (it is in
                        // nobody's keydir); step over it to the next one.
                        let at = position + offset as u64;
                        logging::warn(
                            "compaction skips a corrupt record",
                            &[("shard", &self.shard), ("offset", &at), ("error", &error)],
                        );
                        let tail = chunk.len().saturating_sub(record::MAGIC_END_OFFSET).max(offset + 1);
                        walked.consumed = record::next_record(chunk, offset + 1).unwrap_or(tail);
                        continue;
                    }
                };
                let at = Location { offset: segment.first + position + offset as u64, bytes: length as u32 };
                if let Some(end) = self.store.copy_forward(now_ms, &record, at, segment.oldest) {
                    walked.copies_end = Some(end);
                }
                walked.consumed += length;
            }
            self.store.settle_dead();
            drop(busy);
            self.metrics.shard(self.shard).compaction_step(step.elapsed().as_micros() as u64);
            monoio::time::sleep(STEP_PAUSE).await;
        }
        Ok(Some(walked))
    }
}

/// The segment being compacted.
#[derive(Clone, Copy)]
struct Walk {
    first: u64,
    oldest: bool,
}

/// How far one chunk's walk got.
struct Walked {
    /// Bytes of whole records walked.
    consumed: usize,
    /// The next chunk's size: larger when a record did not fit this one.
    want: usize,
    copies_end: Option<u64>,
}

/// Reads `length` bytes at `position` of `path` on a helper thread.
async fn read_chunk(
    files: &offload::Worker<offload::Job>,
    path: &std::path::Path,
    position: u64,
    length: usize,
) -> io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    files
        .run(move || {
            let mut chunk = vec![0; length];
            fs::File::open(path)?.read_exact_at(&mut chunk, position)?;
            Ok(chunk)
        })
        .await
}

/// Deletes a compacted segment and its hint file, then syncs the directory.
async fn remove_segment(files: &offload::Worker<offload::Job>, path: PathBuf, first: u64) -> io::Result<()> {
    let hint_path = path.with_file_name(hint_name(first));
    files
        .run(move || {
            match fs::remove_file(&hint_path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
            fs::remove_file(&path)?;
            sync_dir(path.parent().expect("a segment has a directory"))
        })
        .await
}
