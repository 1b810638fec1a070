//! Reading evicted values back from their segments, off the event loop.
//!
//! Each shard has one reader thread ([`offload::Worker`]) fed by a bounded
//! queue ([`READ_QUEUE_ENTRIES`]; full → the read is refused at once and
//! the GET gets 503). A read waits at most `--disk-queue-timeout`: the
//! caller stops waiting then (503), and the thread skips a job whose
//! deadline passed in the queue, so a backlog behind a slow disk drains
//! without reading. The thread keeps a few segment files open; a file
//! compacted away is still readable through an open descriptor, and a read
//! that finds it gone fails with `NotFound`, after which the caller looks
//! the key up again (its record has moved).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segments::stall_while;
use crate::runtime::offload::{self, Completion, Slot};

/// Reads queued per shard; beyond it, refused.
pub const READ_QUEUE_ENTRIES: usize = 1024;
/// Segment files a reader keeps open.
const OPEN_FILES_MAX: usize = 64;

struct ReadJob {
    deadline: Instant,
    path: PathBuf,
    offset: u64,
    bytes: u32,
    slot: Arc<Slot<io::Result<Vec<u8>>>>,
}

/// A shard's reader thread.
pub struct Reader {
    worker: offload::Worker<ReadJob>,
    timeout: Duration,
}

impl Reader {
    /// A reader whose reads wait at most `timeout`; `stall` is the test
    /// hook of a slow disk (reads wait while that file exists).
    pub fn spawn(shard: u32, timeout: Duration, stall: Option<PathBuf>) -> io::Result<Reader> {
        let mut open: HashMap<PathBuf, File> = HashMap::new();
        let worker = offload::Worker::spawn(format!("shardgate-read-{shard}"), READ_QUEUE_ENTRIES, move |job| {
            let ReadJob { deadline, path, offset, bytes, slot } = job;
            stall_while(stall.as_deref());
            if Instant::now() >= deadline {
                slot.complete(Err(io::ErrorKind::TimedOut.into()));
                return;
            }
            slot.complete(read(&mut open, path, offset, bytes));
        })?;
        Ok(Reader { worker, timeout })
    }

    /// How long a read may wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Queues a read of `bytes` at `offset` of `path`; None when the queue is full.
    pub fn read(&self, path: PathBuf, offset: u64, bytes: u32) -> Option<Completion<io::Result<Vec<u8>>>> {
        let slot = Slot::new();
        let completion = Completion::of(&slot);
        let deadline = Instant::now() + self.timeout;
        self.worker.try_send(ReadJob { deadline, path, offset, bytes, slot }).ok()?;
        Some(completion)
    }
}

fn read(open: &mut HashMap<PathBuf, File>, path: PathBuf, offset: u64, bytes: u32) -> io::Result<Vec<u8>> {
    if !open.contains_key(&path) {
        if open.len() >= OPEN_FILES_MAX {
            open.clear();
        }
        let file = File::open(&path)?;
        open.insert(path.clone(), file);
    }
    let mut buffer = vec![0; bytes as usize];
    open[&path].read_exact_at(&mut buffer, offset)?;
    Ok(buffer)
}
