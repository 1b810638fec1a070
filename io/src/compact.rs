//! Background compaction of a shard's log (Bitcask's merge, one segment at
//! a time).
//!
//! The core's [`SegmentBook`](shardgate_shards::compaction::SegmentBook)
//! knows each segment's live bytes. When a sealed segment's dead share
//! reaches [`DEAD_RATIO_MIN`], the compactor reads it on a helper thread
//! (file I/O never runs on the event loop) and walks its records in steps
//! of at most [`STEP_BUDGET`], sleeping between steps so requests run:
//!
//! - a put that is still the key's current record is appended again at the
//!   head (same key, value, content type, timestamp and absolute expiry)
//!   and the key's entry is pointed at the copy;
//! - a tombstone is copied forward while older segments may still hold the
//!   put it shadows, and dropped when its segment is the oldest;
//! - everything else (overwritten, deleted, expired) is left behind.
//!
//! Once the copies are durable the segment file is deleted (unlink, then
//! fsync the directory). A crash before that leaves both the segment and
//! the copies; recovery lets the later copy win, which holds the same
//! value. At a dead share of 1/2, sealed segments hold at most twice the
//! live bytes.

use std::cell::RefCell;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use shardgate_shards::compaction::Location;
use shardgate_shards::record::{self, DecodeError, Record, RecordOp};

use crate::core::{unix_ms, Core};
use crate::durable::{CoreLog, DurableFuture};
use crate::log::{hint_name, segment_name, shard_dir, sync_dir};
use crate::logging;

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

/// Compacts the core's segments for as long as the core runs.
pub async fn compactor(core: Rc<Core>) {
    loop {
        monoio::time::sleep(CHECK_INTERVAL).await;
        if core.shutting_down.get() {
            return;
        }
        if !core.mesh.is_ready() || core.write_refusal().is_some() {
            continue;
        }
        let candidate = core.log.borrow().book.candidate(DEAD_RATIO_MIN);
        if let Some(first) = candidate {
            if let Err(error) = compact_segment(&core, first).await {
                logging::error(
                    "compaction failed; will retry",
                    &[("shard", &core.id), ("segment", &first), ("error", &error)],
                );
                monoio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs `work` on a helper thread and waits for it without blocking the loop.
async fn off_loop<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    let (done, outcome) = mpsc::sync_channel(1);
    std::thread::Builder::new().name("shardgate-compact".to_string()).spawn(move || {
        let _ = done.send(work());
    })?;
    loop {
        match outcome.try_recv() {
            Ok(result) => return result,
            Err(mpsc::TryRecvError::Empty) => monoio::time::sleep(STEP_PAUSE).await,
            Err(mpsc::TryRecvError::Disconnected) => return Err(io::Error::other("the compaction thread panicked")),
        }
    }
}

async fn compact_segment(core: &Rc<Core>, first: u64) -> io::Result<()> {
    let started = Instant::now();
    let path: PathBuf = shard_dir(&core.config.log.data_dir, core.id).join(segment_name(first));
    let segment_bytes = core.log.borrow().book.stats(first).expect("the candidate is known").bytes;
    let oldest = core.log.borrow().book.is_oldest(first);
    let mut copies_end = None;
    // The segment is read in chunks, so the helper thread's copying never
    // holds this core's CPU for long and memory stays bounded.
    let mut position = 0u64;
    let mut want = READ_CHUNK_BYTES;
    while position < segment_bytes {
        let length = want.min((segment_bytes - position) as usize);
        let read_path = path.clone();
        let chunk = off_loop(move || {
            let mut chunk = vec![0; length];
            fs::File::open(read_path)?.read_exact_at(&mut chunk, position)?;
            Ok(chunk)
        })
        .await?;
        let mut offset = 0;
        want = READ_CHUNK_BYTES;
        let mut need_more = false;
        while offset < chunk.len() && !need_more {
            if core.shutting_down.get() || core.write_refusal().is_some() {
                return Ok(()); // Resumed later; the copies made so far are harmless.
            }
            let step = Instant::now();
            let now_ms = unix_ms(SystemTime::now());
            let busy = core.metrics_all.heartbeats.busy(core.id, &core.metrics_all);
            while offset < chunk.len() && step.elapsed() < STEP_BUDGET {
                let (record, length) = match record::decode(&chunk[offset..]) {
                    Ok(decoded) => decoded,
                    // A record continues past the chunk: read on from its start.
                    Err(DecodeError::Truncated { needed, .. })
                        if position + (offset + needed) as u64 <= segment_bytes =>
                    {
                        want = want.max(needed);
                        need_more = true;
                        break;
                    }
                    Err(error) => {
                        let at = position + offset as u64;
                        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("at {at}: {error}")));
                    }
                };
                let at = Location { offset: first + position + offset as u64, bytes: length as u32 };
                if let Some(end) = keep(core, &record, at, oldest, now_ms) {
                    copies_end = Some(end);
                }
                offset += length;
            }
            core.settle_dead();
            drop(busy);
            core.metrics().compaction_step(step.elapsed().as_micros() as u64);
            monoio::time::sleep(STEP_PAUSE).await;
        }
        position += offset as u64;
    }
    if let Some(end) = copies_end {
        DurableFuture { log: Rc::clone(&core.log), end }.await;
    }
    let stats = core.log.borrow().book.stats(first).expect("the candidate is known");
    if stats.live_bytes != 0 {
        return Err(io::Error::other(format!("{} live bytes left after copying", stats.live_bytes)));
    }
    let hint_path = path.with_file_name(hint_name(first));
    off_loop(move || {
        match fs::remove_file(&hint_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        fs::remove_file(&path)?;
        sync_dir(path.parent().expect("a segment has a directory"))
    })
    .await?;
    core.log.borrow_mut().book.remove(first);
    core.metrics().compacted(stats.bytes);
    logging::info(
        "compacted",
        &[
            ("shard", &core.id),
            ("segment", &first),
            ("bytes", &stats.bytes),
            ("millis", &started.elapsed().as_millis()),
        ],
    );
    Ok(())
}

/// Copies `record` to the head if it is still needed. Returns the end of
/// the copy.
fn keep(core: &Core, record: &Record<'_>, at: Location, oldest: bool, now_ms: u64) -> Option<u64> {
    match record.op {
        RecordOp::Put => {
            let current = core.shard.borrow_mut().live_location(now_ms, record.key);
            if current != Some(at) {
                return None;
            }
            let copy = append(&core.log, record, true);
            let moved = core.shard.borrow_mut().relocate(record.key, at, copy);
            assert!(moved, "the entry pointed at the record a moment ago");
            core.log.borrow_mut().book.dead(at);
            Some(copy.end())
        }
        RecordOp::Delete => {
            let absent = core.shard.borrow_mut().live_location(now_ms, record.key).is_none();
            (absent && !oldest).then(|| append(&core.log, record, false).end())
        }
    }
}

fn append(log: &RefCell<CoreLog>, record: &Record<'_>, live: bool) -> Location {
    log.borrow_mut().append(*record, live, Instant::now())
}
