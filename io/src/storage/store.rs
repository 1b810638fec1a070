//! One shard's key-value state and its log, kept in step.
//!
//! [`Store`] owns the keydir ([`KvShard`]), the append side of the log
//! ([`CoreLog`]) and the cold-read thread. **Every change of the keydir
//! goes through a method here that makes the matching change to the log
//! and its segment book:** a write's record is appended where the keydir
//! was told it sits, a compaction copy moves the entry and the record in
//! one step, and records the keydir stops needing are reported dead to the
//! book. Nothing outside this module borrows the keydir.

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use shardgate_shards::compaction::Location;
use shardgate_shards::conditions::{Conditions, Etag};
use shardgate_shards::kv::{KvShard, Op, Outcome};
use shardgate_shards::record::{self, Record, RecordOp, TooLong};

use super::durable::{CoreLog, DurableFuture};
use super::error::{ReadError, Refusal};
use super::reader::Reader;
use super::segments::{segment_name, shard_dir};
use crate::config::Durability;
use crate::runtime::metrics::{DiskRefusal, Metrics, ShardMetrics};
use crate::runtime::unix_ms;

/// Lookups of a moving record before giving up (compaction moved it each time).
const READ_ATTEMPTS_MAX: usize = 4;

pub struct Store {
    id: u32,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    shard: RefCell<KvShard>,
    log: Rc<RefCell<CoreLog>>,
    /// None until the shard recovered: no read reaches the disk before.
    reader: RefCell<Option<Reader>>,
    /// Reused buffer for dead record locations.
    dead_scratch: RefCell<Vec<Location>>,
}

impl Store {
    /// The placeholder a core holds while its shard recovers: an empty
    /// keydir of `kv_bytes`, a log that takes no writes, no reader.
    pub fn recovering(id: u32, metrics: Arc<Metrics>, data_dir: &std::path::Path, kv_bytes: u64) -> Store {
        let store = Store {
            id,
            metrics,
            dir: shard_dir(data_dir, id),
            shard: RefCell::new(KvShard::new(kv_bytes)),
            log: Rc::new(RefCell::new(CoreLog::unused())),
            reader: RefCell::new(None),
            dead_scratch: RefCell::new(Vec::new()),
        };
        store.publish();
        store
    }

    /// Installs the recovered keydir, log and reader.
    pub fn install(&self, kv: KvShard, log: CoreLog, reader: Reader) {
        *self.shard.borrow_mut() = kv;
        *self.log.borrow_mut() = log;
        *self.reader.borrow_mut() = Some(reader);
        self.publish();
    }

    fn metrics(&self) -> &ShardMetrics {
        self.metrics.shard(self.id)
    }

    /// The log, for the tasks that flush it and complete its waits.
    pub fn log(&self) -> &Rc<RefCell<CoreLog>> {
        &self.log
    }

    pub fn durability(&self) -> Durability {
        self.log.borrow().durability
    }

    /// Resolves once the log is durable up to `end`.
    pub fn durable(&self, end: u64) -> DurableFuture {
        DurableFuture::new(&self.log, end)
    }

    /// Holds a forwarded sync write's reply until `end` is durable.
    pub fn defer_reply(&self, end: u64, source: u32, token: u32, outcome: Outcome) {
        self.log.borrow_mut().defer_reply(end, source, token, outcome);
    }

    /// Why a write (a `sync` one, waiting for its group commit) cannot be
    /// taken now, if it cannot.
    pub fn refusal(&self, sync: bool) -> Option<Refusal> {
        self.log.borrow().refusal(sync)
    }

    /// Applies an op to the keydir and logs a successful write. Returns the
    /// outcome and, for a logged write, the log offset past its record
    /// (durable once the log's durable end reaches it); or, before anything
    /// changed, the field a put's record cannot hold.
    pub fn apply(&self, now_ms: u64, op: Op) -> Result<(Outcome, Option<u64>), TooLong> {
        if let Op::Put { key, value, content_type, .. } = &op {
            record::check_lengths(key, content_type, value)?;
        }
        Ok(self.apply_checked(now_ms, op))
    }

    fn apply_checked(&self, now_ms: u64, op: Op) -> (Outcome, Option<u64>) {
        let logged = match &op {
            Op::Put { key, value, content_type, .. } => {
                Some((RecordOp::Put, key.clone(), value.clone(), content_type.clone()))
            }
            Op::Delete { key, .. } => Some((RecordOp::Delete, key.clone(), Bytes::new(), Bytes::new())),
            Op::Get { .. } => None,
        };
        // Where the write's record will sit, if the write happens.
        let location = match &logged {
            Some((_, key, value, content_type)) => Location {
                offset: self.log.borrow().next_offset(),
                bytes: (record::HEADER_BYTES + key.len() + value.len() + content_type.len()) as u32,
            },
            None => Location::NONE,
        };
        let durable_end = self.log.borrow().durable_end();
        let mut shard = self.shard.borrow_mut();
        shard.set_durable_end(durable_end);
        let outcome = shard.handle_at(now_ms, op, location);
        drop(shard);
        if logged.is_none() {
            self.metrics().lookup(!matches!(outcome, Outcome::NotFound));
        }
        self.publish_keys();
        let expires_at_ms = match (&outcome, &logged) {
            (Outcome::Stored { expires_at_ms, .. }, Some((RecordOp::Put, ..))) => *expires_at_ms,
            (Outcome::Deleted, Some((RecordOp::Delete, ..))) => None,
            _ => {
                self.settle_dead();
                return (outcome, None);
            }
        };
        let (op, key, value, content_type) = logged.expect("a logged outcome comes from a write");
        let record = Record {
            op,
            sequence: 0,
            timestamp_ms: now_ms,
            expires_at_ms,
            key: &key,
            content_type: &content_type,
            value: &value,
        };
        let appended = self.log.borrow_mut().append(record, op == RecordOp::Put, Instant::now());
        assert_eq!(appended, location, "the record sits where the shard was told");
        self.settle_dead();
        (outcome, Some(location.end()))
    }

    /// Reads a key from the keydir.
    pub fn read(&self, now_ms: u64, key: &[u8], conditions: &Conditions) -> Outcome {
        let outcome = self.shard.borrow_mut().get(now_ms, key, conditions);
        self.metrics().lookup(!matches!(outcome, Outcome::NotFound));
        if matches!(outcome, Outcome::NotFound) {
            self.settle_dead(); // The key may have just expired.
        }
        outcome
    }

    /// The live keys starting with `prefix`, with their content types.
    pub fn keys_with_prefix(&self, now_ms: u64, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.shard.borrow().keys_with_prefix(now_ms, prefix)
    }

    /// Drops up to `max` expired keys. Returns how many went.
    pub fn sweep_expired(&self, now_ms: u64, max: usize) -> usize {
        let swept = self.shard.borrow_mut().sweep_expired(now_ms, max);
        self.settle_dead();
        self.metrics().expired(swept);
        self.publish();
        swept
    }

    /// Tells the log's segment book about records the keydir stopped needing.
    pub fn settle_dead(&self) {
        let mut dead = self.dead_scratch.borrow_mut();
        self.shard.borrow_mut().drain_dead(&mut dead);
        if dead.is_empty() {
            return;
        }
        let mut log = self.log.borrow_mut();
        for location in dead.drain(..) {
            log.book.dead(location);
        }
    }

    fn publish_keys(&self) {
        let shard = self.shard.borrow();
        self.metrics().store(shard.bytes_held(), shard.bytes_max(), shard.keys(), shard.evictions());
    }

    /// Updates the keydir and log gauges.
    pub fn publish(&self) {
        self.publish_keys();
        let log = self.log.borrow();
        self.metrics().log_bytes(log.book.disk_bytes(), log.book.live_bytes());
    }

    /// Reads `key`'s evicted value from its record at `location`, verifies
    /// it (checksum, key, op) and caches it again. Returns the GET's outcome,
    /// with the content type the record holds.
    pub async fn read_cold(&self, key: Bytes, mut location: Location, etag: Etag) -> Result<Outcome, ReadError> {
        for _ in 0..READ_ATTEMPTS_MAX {
            let segment = self.log.borrow().book.segment_of(location.offset);
            let read = segment.map(|first| {
                let path = self.dir.join(segment_name(first));
                let reader = self.reader.borrow();
                let reader = reader.as_ref()?;
                Some((reader.read(path, location.offset - first, location.bytes)?, reader.timeout()))
            });
            let result = match read {
                // Waits at most --disk-queue-timeout; the reader skips a job
                // whose wait is over, so a backlog drains at once.
                Some(Some((completion, timeout))) => match monoio::time::timeout(timeout, completion).await {
                    Ok(result) => result,
                    Err(_) => {
                        self.metrics().disk_refused(DiskRefusal::ReadTimeout);
                        return Err(ReadError::Timeout);
                    }
                },
                Some(None) => {
                    self.metrics().disk_refused(DiskRefusal::ReadQueueFull);
                    return Err(ReadError::QueueFull);
                }
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            };
            match result {
                Ok(bytes) => return self.fill(&key, location, bytes, etag),
                Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof) => {
                    // Compacted away meanwhile: look again where the record went.
                    match self.read(unix_ms(SystemTime::now()), &key, &Conditions::default()) {
                        Outcome::Cold { location: moved, .. } if moved != location => location = moved,
                        Outcome::Cold { .. } => break,
                        other => return Ok(other),
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    self.metrics().disk_refused(DiskRefusal::ReadTimeout);
                    return Err(ReadError::Timeout);
                }
                Err(error) => return Err(ReadError::Unreadable(error.to_string())),
            }
        }
        Err(ReadError::Unreadable("the record kept moving".to_string()))
    }

    /// Verifies a record read back and caches its value again.
    fn fill(&self, key: &[u8], location: Location, bytes: Vec<u8>, etag: Etag) -> Result<Outcome, ReadError> {
        let (value_range, type_range) = {
            let (record, length) = record::decode(&bytes).map_err(|e| ReadError::Unreadable(e.to_string()))?;
            if length != bytes.len() || record.key != key || record.op != RecordOp::Put {
                return Err(ReadError::Unreadable("the record at the key's location is another one".to_string()));
            }
            let offset = |part: &[u8]| part.as_ptr() as usize - bytes.as_ptr() as usize;
            let (value_at, type_at) = (offset(record.value), offset(record.content_type));
            (value_at..value_at + record.value.len(), type_at..type_at + record.content_type.len())
        };
        let bytes = Bytes::from(bytes);
        // The record's content type: the keydir keeps none for a cold entry
        // whose type is not a common one.
        let (value, content_type) = (bytes.slice(value_range), bytes.slice(type_range));
        self.shard.borrow_mut().fill(key, location, value.clone(), content_type.clone());
        self.metrics().disk_read();
        Ok(Outcome::Value { value, content_type, etag })
    }

    /// Compaction: copies `record`, found at `at`, to the log's head when
    /// it is still needed, and points the key's entry at the copy in the
    /// same step. `oldest`: `at` is in the oldest segment, so a tombstone
    /// there shadows nothing older. Returns the end of the copy.
    pub(super) fn copy_forward(&self, now_ms: u64, record: &Record<'_>, at: Location, oldest: bool) -> Option<u64> {
        let current = self.shard.borrow_mut().live_location(now_ms, record.key);
        match record.op {
            RecordOp::Put if current == Some(at) => {
                let copy = self.log.borrow_mut().append(*record, true, Instant::now());
                let moved = self.shard.borrow_mut().relocate(record.key, at, copy);
                assert!(moved, "the entry pointed at the record a moment ago");
                self.log.borrow_mut().book.dead(at);
                Some(copy.end())
            }
            // The key has no live record (it expired, or was deleted): this
            // put may be all that shadows an older put of the key in an
            // older segment, so its removal leaves a tombstone behind, or
            // the older value would come back at the next recovery.
            RecordOp::Put | RecordOp::Delete if current.is_none() && !oldest => {
                let tombstone =
                    Record { op: RecordOp::Delete, content_type: b"", value: b"", expires_at_ms: None, ..*record };
                Some(self.log.borrow_mut().append(tombstone, false, Instant::now()).end())
            }
            _ => None,
        }
    }

    /// The shard's directory of segments.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}
