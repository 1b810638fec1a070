//! The segment files of one shard's log: segment files, the I/O thread that writes
//! them, and recovery at start.
//!
//! `DATA_DIR/shard-NNN/` holds segments named by the log offset of their
//! first byte (`00000000000000000000.log`). The core appends encoded records
//! to an in-memory buffer; a flush hands everything buffered to the shard's
//! I/O thread, which writes it with one write and one fdatasync (group
//! commit) and publishes the durable offset. File I/O never runs on the event
//! loop: monoio's epoll driver would block the loop on it.
//!
//! Crash safety: a new segment is created under a temporary name, synced,
//! renamed, and the directory synced, so a segment that exists is complete
//! as a file. A torn tail inside the last segment is found by checksum at
//! recovery and truncated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use shardgate_shards::hint;
use shardgate_shards::record::{self, Scan};

use crate::config::LogConfig;
use crate::runtime::logging;
use crate::runtime::metrics::Metrics;

/// The file operations of a shard's I/O thread: the seam where tests
/// inject storage faults (a full disk) without filling a real one.
pub trait Storage: Send {
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()>;
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// The real disk.
pub struct Disk;

impl Storage for Disk {
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// A disk with test faults: full while `full` exists (a write then stores
/// half its bytes and fails with ENOSPC, as a real full disk does
/// mid-write), stalled while `stall` exists (an fdatasync waits, as on a
/// disk that cannot keep up).
pub struct Faulty {
    pub full: Option<PathBuf>,
    pub stall: Option<PathBuf>,
}

impl Storage for Faulty {
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        if self.full.as_ref().is_some_and(|switch| switch.exists()) {
            file.write_all(&bytes[..bytes.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        file.write_all(bytes)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        stall_while(self.stall.as_deref());
        file.sync_data()
    }
}

/// Longest a test's stall switch holds a disk operation.
const STALL_MAX: Duration = Duration::from_secs(60);

/// Test hook: waits while `switch` exists (at most [`STALL_MAX`]).
pub fn stall_while(switch: Option<&Path>) {
    let Some(switch) = switch else {
        return;
    };
    let started = Instant::now();
    while switch.exists() && started.elapsed() < STALL_MAX {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The disk a shard's I/O thread writes through: the real one, or one
/// with the test faults its configuration names.
pub fn storage_for(config: &LogConfig) -> Box<dyn Storage> {
    match (&config.full_disk_switch, &config.stall_disk_switch) {
        (None, None) => Box::new(Disk),
        (full, stall) => Box::new(Faulty { full: full.clone(), stall: stall.clone() }),
    }
}

/// What the I/O thread publishes to its core.
#[derive(Default)]
pub struct Flushed {
    /// Log offset up to which every byte is on disk.
    pub durable_end: AtomicU64,
    /// The last flush failed (e.g. ENOSPC); cleared by the next success.
    pub failed: AtomicBool,
    /// The core's log task, woken after every flush.
    pub waker: AtomicWaker,
    /// Moving average of the disk's write rate in large flushes, bytes
    /// per second (0 until one was seen): how long a backlog will take.
    pub bytes_per_s: AtomicU64,
}

/// Flushes from this size on measure the disk's write rate (smaller ones
/// measure its fdatasync latency instead).
const RATE_FLUSH_BYTES_MIN: usize = 64 * 1024;

impl Flushed {
    /// Folds one flush of `bytes` that took `micros` into the write rate.
    fn record_rate(&self, bytes: usize, micros: u64) {
        if bytes < RATE_FLUSH_BYTES_MIN {
            return;
        }
        let rate = bytes as u64 * 1_000_000 / micros.max(1);
        let average = self.bytes_per_s.load(Ordering::Relaxed);
        let next = if average == 0 { rate } else { (average * 3 + rate) / 4 };
        self.bytes_per_s.store(next, Ordering::Relaxed);
    }
}

/// One flush: bytes that continue the log at `start`.
pub struct FlushJob {
    pub start: u64,
    pub bytes: Vec<u8>,
    /// The bytes begin a new segment named by `start`.
    pub new_segment: bool,
}

/// The directory of shard `shard`.
pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

pub(super) fn segment_name(first_offset: u64) -> String {
    format!("{first_offset:020}.log")
}

/// The file in the data directory that records the shard count its
/// `shard-NNN` directories were written for.
const SHARDS_FILE: &str = "shards";

/// The shard count `dir` was written for, if it says.
pub fn shards_file_read(dir: &Path) -> io::Result<Option<u32>> {
    match fs::read_to_string(dir.join(SHARDS_FILE)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{SHARDS_FILE} holds {text:?}"))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Records the shard count of `dir`, crash-safely (write, fsync, rename,
/// fsync the directory).
pub fn shards_file_write(dir: &Path, count: u32) -> io::Result<()> {
    let temporary = dir.join(format!("{SHARDS_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(format!("{count}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(SHARDS_FILE))?;
    sync_dir(dir)
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A shard's segments, oldest first, as (first offset, path). A missing
/// directory has none.
pub(super) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        let offset = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|stem| stem.len() == 20)
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(offset) = offset {
            found.push((offset, path));
        }
    }
    found.sort();
    Ok(found)
}

/// What recovery found in one shard's directory.
pub struct Replayed {
    /// Every record of every segment, in log order, handed to the caller.
    pub records: u64,
    /// Bytes cut from a torn or corrupt tail of the newest segment.
    pub truncated_bytes: u64,
    /// Bytes of bad records stepped over in sealed segments.
    pub skipped_bytes: u64,
    /// The log offset where appends continue.
    pub end: u64,
    pub sequence_max: u64,
    /// Each segment's first offset and valid bytes, oldest first.
    pub segments: Vec<(u64, u64)>,
    /// Segments recovered from their hint files, values left on disk.
    pub hinted_segments: usize,
}

/// Deletes hint files whose segment is gone (compacted away before its
/// hint was written) and half-written ones.
fn remove_orphan_hints(dir: &Path, found: &[(u64, PathBuf)]) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let orphan = match name.strip_suffix(".hint") {
            Some(stem) => !found.iter().any(|(first, _)| format!("{first:020}") == stem),
            None => name.ends_with(".hint.tmp"),
        };
        if orphan {
            fs::remove_file(dir.join(&name))?;
        }
    }
    Ok(())
}

/// The hint file of the segment starting at `first_offset`.
pub(super) fn hint_name(first_offset: u64) -> String {
    format!("{first_offset:020}.hint")
}

/// Reads a shard's segments (sealed ones from their hint files where those
/// are intact), hands the live state to `restore`, truncates a torn tail of
/// the last segment, and returns where the log continues.
pub fn replay(dir: &Path, now_ms: u64, mut restore: impl FnMut(&[u8], hint::Live<'_>)) -> io::Result<Replayed> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        // The new directory's entry is durable before any segment in it is.
        sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
    }
    let found = segments(dir)?;
    remove_orphan_hints(dir, &found)?;
    let last = found.len().saturating_sub(1);
    let contents = read_contents(dir, &found)?;
    let sources: Vec<hint::Source<'_>> = found
        .iter()
        .zip(&contents)
        .map(|((first, _), (hinted, bytes))| match hinted {
            true => hint::Source::Hinted { first: *first, hints: hint::decode(bytes).expect("checked above") },
            false => hint::Source::Read { first: *first, bytes },
        })
        .collect();
    let recovered = hint::recover(&sources, now_ms);
    let mut live: Vec<_> = recovered.live.iter().collect();
    live.sort_by_key(|(_, item)| item.location.offset);
    for (key, item) in live {
        restore(key, *item);
    }
    let mut truncated_bytes = 0;
    let mut skipped_total = 0;
    let mut sizes = Vec::with_capacity(found.len());
    for (index, (scan, (first, path))) in recovered.scans.iter().zip(&found).enumerate() {
        let read_bytes = contents[index].1.len();
        let Some(Scan { valid_bytes, stop, skipped_ranges, skipped_bytes, .. }) = *scan else {
            sizes.push((*first, fs::metadata(path)?.len()));
            continue;
        };
        sizes.push((*first, valid_bytes as u64));
        if skipped_ranges > 0 {
            log_skipped(path, skipped_ranges, skipped_bytes, stop);
            skipped_total += skipped_bytes as u64;
        }
        let discarded = read_bytes - valid_bytes;
        if discarded > 0 {
            assert_eq!(index, last, "only the newest segment is cut at a torn tail");
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(valid_bytes as u64)?;
            file.sync_all()?;
            truncated_bytes += discarded as u64;
        }
    }
    let end = sizes.last().map_or(0, |(first, bytes)| first + bytes);
    let hinted = contents.iter().filter(|(hinted, _)| *hinted).count();
    Ok(Replayed {
        records: recovered.records,
        truncated_bytes,
        skipped_bytes: skipped_total,
        end,
        sequence_max: recovered.sequence_max,
        segments: sizes,
        hinted_segments: hinted,
    })
}

/// Per segment: its hint file's bytes (when the segment is sealed and the
/// hint file intact), else the segment's own.
fn read_contents(dir: &Path, found: &[(u64, PathBuf)]) -> io::Result<Vec<(bool, Vec<u8>)>> {
    let last = found.len().saturating_sub(1);
    let mut contents = Vec::with_capacity(found.len());
    for (index, (first, path)) in found.iter().enumerate() {
        let hinted = (index < last)
            .then(|| fs::read(dir.join(hint_name(*first))).ok())
            .flatten()
            .filter(|bytes| hint::decode(bytes).is_ok());
        contents.push(match hinted {
            Some(bytes) => (true, bytes),
            None => (false, fs::read(path)?),
        });
    }
    Ok(contents)
}

/// A sealed segment lost its bad records only; says which.
fn log_skipped(path: &Path, ranges: usize, bytes: usize, first: Option<record::DecodeError>) {
    let error = first.map_or("none".to_string(), |e| e.to_string());
    logging::error(
        "corrupt records skipped in a sealed segment",
        &[("path", &path.display()), ("ranges", &ranges), ("bytes", &bytes), ("first_error", &error)],
    );
}

/// The shard's I/O thread: appends each job to the active segment, rolls
/// segments, fdatasyncs once per job, and publishes the durable offset.
/// It also keeps the hints of the active segment's records and writes them
/// as the segment's hint file when the segment is sealed.
pub fn spawn_writer(
    shard: u32,
    dir: PathBuf,
    end: u64,
    jobs: mpsc::Receiver<FlushJob>,
    flushed: Arc<Flushed>,
    metrics: Arc<Metrics>,
    storage: Box<dyn Storage>,
) -> io::Result<std::thread::JoinHandle<()>> {
    flushed.durable_end.store(end, Ordering::Release);
    let mut active = open_active(&dir, end)?;
    let mut hints = Hints::default();
    if active.length > 0 {
        let bytes = fs::read(dir.join(segment_name(active.first_offset)))?;
        hints.count = hint::of_segment(&bytes[..active.length as usize], &mut hints.bytes);
    }
    std::thread::Builder::new().name(format!("shardgate-log-{shard}")).spawn(move || {
        for job in jobs {
            if job.new_segment && active.length > 0 {
                // The active segment is sealed: its hints become its hint
                // file, written on a thread of its own so this job (and the
                // writers waiting on it) does not wait for it.
                let (sealed, dir, first) = (std::mem::take(&mut hints), dir.clone(), active.first_offset);
                let spawned = std::thread::Builder::new().name(format!("shardgate-hint-{shard}")).spawn(move || {
                    if let Err(error) = write_hints(&dir, first, sealed) {
                        logging::warn(
                            "hint file not written; recovery will read the segment",
                            &[("shard", &shard), ("segment", &first), ("error", &error)],
                        );
                    }
                });
                if spawned.is_err() {
                    logging::warn("no thread for a hint file; recovery will read the segment", &[("shard", &shard)]);
                }
            }
            // A failed write (ENOSPC, EIO) is cut back and retried: the bytes
            // were acknowledged (async) or are awaited (sync), so they are
            // never dropped. Meanwhile `failed` tells the core to refuse new
            // writes.
            loop {
                let started = Instant::now();
                match write_job(&dir, &mut active, &job, storage.as_ref()) {
                    Ok(()) => {
                        let at = job.start - active.first_offset;
                        record::scan(&job.bytes, |offset, record| {
                            hint::encode_entry(&record, at + offset as u64, &mut hints.bytes);
                            hints.count += 1;
                        });
                        let micros = started.elapsed().as_micros() as u64;
                        metrics.shard(shard).flushed(job.bytes.len() as u64, micros);
                        flushed.record_rate(job.bytes.len(), micros);
                        flushed.failed.store(false, Ordering::Release);
                        flushed.durable_end.store(job.start + job.bytes.len() as u64, Ordering::Release);
                        flushed.waker.wake();
                        break;
                    }
                    Err(error) => {
                        if !flushed.failed.swap(true, Ordering::AcqRel) {
                            logging::error("log write failed; retrying", &[("shard", &shard), ("error", &error)]);
                        }
                        flushed.waker.wake();
                        let _ = active.file.set_len(active.length);
                        std::thread::sleep(RETRY_INTERVAL);
                    }
                }
            }
        }
    })
}

/// The hints of the active segment's records so far.
#[derive(Default)]
struct Hints {
    bytes: Vec<u8>,
    count: u32,
}

/// Writes a sealed segment's hint file crash-safely (temporary name, sync,
/// rename, sync the directory) and starts the next segment's hints.
fn write_hints(dir: &Path, first_offset: u64, hints: Hints) -> io::Result<()> {
    let Hints { mut bytes, count } = hints;
    hint::finish(count, &mut bytes);
    let name = hint_name(first_offset);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    fs::rename(&temporary, dir.join(&name))?;
    sync_dir(dir)
}

/// Pause between attempts at a failed write.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The active segment: the last one, or a new first one.
struct Active {
    file: File,
    first_offset: u64,
    length: u64,
}

fn open_active(dir: &Path, end: u64) -> io::Result<Active> {
    match segments(dir)?.last() {
        Some((first, path)) => {
            let file = OpenOptions::new().append(true).open(path)?;
            Ok(Active { file, first_offset: *first, length: end - first })
        }
        None => create_segment(dir, end),
    }
}

/// Creates an empty segment crash-safely: temporary name, sync, rename,
/// sync the directory.
fn create_segment(dir: &Path, first_offset: u64) -> io::Result<Active> {
    let name = segment_name(first_offset);
    let temporary = dir.join(format!("{name}.tmp"));
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(&name))?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new().append(true).open(dir.join(&name))?;
    Ok(Active { file, first_offset, length: 0 })
}

fn write_job(dir: &Path, active: &mut Active, job: &FlushJob, storage: &dyn Storage) -> io::Result<()> {
    assert_eq!(job.start, active.first_offset + active.length, "flush jobs are contiguous");
    if job.new_segment {
        *active = create_segment(dir, job.start)?;
    }
    storage.write_all(&mut active.file, &job.bytes)?;
    storage.sync_data(&active.file)?;
    active.length += job.bytes.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests;
