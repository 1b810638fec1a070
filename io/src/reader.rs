//! Reading evicted values back from their segments, off the event loop.
//!
//! Each shard has one reader thread fed by a bounded queue
//! ([`READ_QUEUE_ENTRIES`]; full → the GET gets 503). A read carries its own
//! result slot, which the thread fills and whose waker it wakes, as the
//! mesh's cross-thread wakes do. The thread keeps a few segment files open;
//! a file compacted away is still readable through an open descriptor, and
//! a read that finds it gone fails with `NotFound`, after which the caller
//! looks the key up again (its record has moved).

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use shardgate_shards::compaction::Location;
use shardgate_shards::kv::Outcome;
use shardgate_shards::record::{self, RecordOp};

use crate::core::{unix_ms, Core};
use crate::http::response::Response;
use crate::log::{segment_name, shard_dir};

/// Reads queued per shard; beyond it, 503.
pub const READ_QUEUE_ENTRIES: usize = 1024;
/// Segment files a reader keeps open.
const OPEN_FILES_MAX: usize = 64;
/// Lookups of a moving record before giving up (compaction moved it each time).
const READ_ATTEMPTS_MAX: usize = 4;

struct ReadJob {
    path: PathBuf,
    offset: u64,
    bytes: u32,
    slot: Arc<Slot>,
}

#[derive(Default)]
struct Slot {
    result: Mutex<Option<io::Result<Vec<u8>>>>,
    waker: AtomicWaker,
}

/// A shard's reader thread.
pub struct Reader {
    jobs: mpsc::SyncSender<ReadJob>,
}

impl Reader {
    pub fn spawn(shard: u32) -> io::Result<Reader> {
        let (jobs, queue) = mpsc::sync_channel::<ReadJob>(READ_QUEUE_ENTRIES);
        std::thread::Builder::new().name(format!("shardgate-read-{shard}")).spawn(move || {
            let mut open: HashMap<PathBuf, File> = HashMap::new();
            for job in queue {
                let result = read(&mut open, &job);
                *job.slot.result.lock().expect("no panics while held") = Some(result);
                job.slot.waker.wake();
            }
        })?;
        Ok(Reader { jobs })
    }

    /// Queues a read; None when the queue is full.
    fn read(&self, path: PathBuf, offset: u64, bytes: u32) -> Option<ReadFuture> {
        let slot = Arc::new(Slot::default());
        let job = ReadJob { path, offset, bytes, slot: Arc::clone(&slot) };
        self.jobs.try_send(job).ok()?;
        Some(ReadFuture { slot })
    }
}

fn read(open: &mut HashMap<PathBuf, File>, job: &ReadJob) -> io::Result<Vec<u8>> {
    if !open.contains_key(&job.path) {
        if open.len() >= OPEN_FILES_MAX {
            open.clear();
        }
        open.insert(job.path.clone(), File::open(&job.path)?);
    }
    let file = &open[&job.path];
    let mut buffer = vec![0; job.bytes as usize];
    file.read_exact_at(&mut buffer, job.offset)?;
    Ok(buffer)
}

struct ReadFuture {
    slot: Arc<Slot>,
}

impl Future for ReadFuture {
    type Output = io::Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.waker.register(cx.waker());
        match self.slot.result.lock().expect("no panics while held").take() {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

/// Reads `key`'s evicted value from its record at `location`, verifies it
/// (checksum, key, op) and caches it again. Returns the GET's outcome, or
/// the response to give instead (503 when the read queue is full, 500 when
/// the record is unreadable: a failing disk).
pub async fn read_cold(
    core: Rc<Core>,
    key: Bytes,
    mut location: Location,
    content_type: Bytes,
    etag: shardgate_shards::conditions::Etag,
) -> Result<Outcome, Response> {
    for _ in 0..READ_ATTEMPTS_MAX {
        let segment = core.log.borrow().book.segment_of(location.offset);
        let read = segment.map(|first| {
            let path = shard_dir(&core.config.log.data_dir, core.id).join(segment_name(first));
            core.reader.read(path, location.offset - first, location.bytes)
        });
        let result = match read {
            Some(Some(future)) => future.await,
            Some(None) => {
                core.metrics().shed();
                return Err(Response::overloaded("too many reads from disk queued on this shard"));
            }
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        match result {
            Ok(bytes) => return decode_value(&core, &key, location, bytes, content_type, etag),
            Err(error) if error.kind() == io::ErrorKind::NotFound || error.kind() == io::ErrorKind::UnexpectedEof => {
                // Compacted away meanwhile: look again where the record went.
                let conditions = shardgate_shards::conditions::Conditions::default();
                match core.read(unix_ms(std::time::SystemTime::now()), &key, &conditions) {
                    Outcome::Cold { location: moved, .. } if moved != location => location = moved,
                    Outcome::Cold { .. } => break,
                    other => return Ok(other),
                }
            }
            Err(error) => return Err(unreadable(&error.to_string())),
        }
    }
    Err(unreadable("the record kept moving"))
}

fn decode_value(
    core: &Core,
    key: &[u8],
    location: Location,
    bytes: Vec<u8>,
    content_type: Bytes,
    etag: shardgate_shards::conditions::Etag,
) -> Result<Outcome, Response> {
    let value_range = {
        let (record, length) = record::decode(&bytes).map_err(|e| unreadable(&e.to_string()))?;
        if length != bytes.len() || record.key != key || record.op != RecordOp::Put {
            return Err(unreadable("the record at the key's location is another one"));
        }
        let start = record.value.as_ptr() as usize - bytes.as_ptr() as usize;
        start..start + record.value.len()
    };
    let value = Bytes::from(bytes).slice(value_range);
    core.shard.borrow_mut().fill(key, location, value.clone());
    core.metrics().disk_read();
    Ok(Outcome::Value { value, content_type, etag })
}

fn unreadable(detail: &str) -> Response {
    Response::problem(500, &format!("a stored value could not be read back from disk: {detail}"))
}
