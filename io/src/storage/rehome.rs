//! Re-homing: moving every key to its owner under a new shard count.
//!
//! Runs at start, before any shard recovers, when the data directory was
//! written with another `--shards`. Every old shard's segments are replayed
//! (`record::recover`: newest record wins, deletes and expired keys drop
//! out) and each live record is appended to the segment of its new owner
//! (`shard_for_key(key, to)`), unchanged: same sequence, timestamp and
//! absolute expiry. Nothing is lost (every live key is written) and nothing
//! is served twice (each key is written to exactly one new shard).
//!
//! Crash safety. The new shards are built in `rehome.tmp/` and made
//! durable (files, then directories); renaming it to `rehome.ready/` is the
//! commit point. Before it, a crash leaves the old layout untouched and the
//! half-built directory is discarded at the next start. After it,
//! [`finish`] (called at every start) completes the swap in two phases
//! named by `rehome.ready/phase`:
//!
//! 1. `old`: every `shard-NNN/` of the data directory moves into
//!    `rehome.old/`; all of them are old in this phase.
//! 2. `new`: every `rehome.ready/shard-NNN/` moves into the data directory;
//!    then the `shards` file records the new count and both scratch
//!    directories are removed.
//!
//! Each step is a rename or is repeated from the start, so a crash at any
//! point leaves a state the next start completes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use shardgate_shards::record;
use shardgate_shards::route::shard_for_stored_key;

use super::segments::{segment_name, segments, shard_dir, shards_file_read, shards_file_write, sync_dir};

const STAGING: &str = "rehome.tmp";
const READY: &str = "rehome.ready";
const OLD: &str = "rehome.old";
const TRASH: &str = "rehome.trash";
const PHASE: &str = "phase";

/// What a re-homing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rehomed {
    pub keys: u64,
    pub bytes: u64,
    pub millis: u64,
}

/// Rebuilds the data directory for `to` shards from its `from` shards, then
/// swaps it in. `segment_bytes` bounds the new segments.
pub fn rehome(data_dir: &Path, from: u32, to: u32, segment_bytes: u64, now_ms: u64) -> io::Result<Rehomed> {
    let started = Instant::now();
    let mut rehomed = stage(data_dir, from, to, segment_bytes, now_ms)?;
    finish(data_dir)?;
    rehomed.millis = started.elapsed().as_millis() as u64;
    Ok(rehomed)
}

/// Builds the new layout in `rehome.tmp/` and commits it as `rehome.ready/`.
fn stage(data_dir: &Path, from: u32, to: u32, segment_bytes: u64, now_ms: u64) -> io::Result<Rehomed> {
    let staging = data_dir.join(STAGING);
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir(&staging)?;
    let mut writers: Vec<SegmentWriter> = (0..to)
        .map(|shard| SegmentWriter::create(&shard_dir(&staging, shard), segment_bytes))
        .collect::<io::Result<_>>()?;
    let mut rehomed = Rehomed::default();
    for old in 0..from {
        let found = segments(&shard_dir(data_dir, old))?;
        let contents: Vec<Vec<u8>> = found.iter().map(|(_, path)| fs::read(path)).collect::<io::Result<_>>()?;
        let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        let recovered = record::recover(&slices, now_ms);
        let mut live: Vec<_> = recovered.live.values().collect();
        live.sort_by_key(|located| (located.segment, located.offset));
        let mut encoded = Vec::new();
        for located in live {
            encoded.clear();
            located.record.encode(&mut encoded);
            let owner = shard_for_stored_key(located.record.key, to);
            writers[owner as usize].append(&encoded)?;
            rehomed.keys += 1;
            rehomed.bytes += encoded.len() as u64;
        }
    }
    for writer in writers {
        writer.finish()?;
    }
    shards_file_write(&staging, to)?;
    sync_dir(&staging)?;
    fs::rename(&staging, data_dir.join(READY))?;
    sync_dir(data_dir)?;
    Ok(rehomed)
}

/// Completes a re-homing that reached its commit point, and discards one
/// that did not. Returns whether there was one to complete.
///
/// Every step can be repeated after a crash at any point, cleanup
/// included: the moves are renames, phase 1 runs only while `rehome.ready/`
/// still holds the new shard directories (so it can never move the new,
/// live directories aside), and `rehome.ready/` leaves by one rename (to
/// `rehome.trash/`, deleted at leisure) rather than by a deletion that a
/// crash could leave half done.
pub fn finish(data_dir: &Path) -> io::Result<bool> {
    for scratch in [STAGING, TRASH] {
        let path = data_dir.join(scratch);
        if path.exists() {
            fs::remove_dir_all(&path)?;
            sync_dir(data_dir)?;
        }
    }
    let ready = data_dir.join(READY);
    if !ready.exists() {
        return Ok(false);
    }
    let old = data_dir.join(OLD);
    let phase = fs::read_to_string(ready.join(PHASE)).unwrap_or_default();
    let staged = shard_dirs(&ready)?;
    if phase.trim() != "new" && !staged.is_empty() {
        fs::create_dir_all(&old)?;
        for shard in shard_dirs(data_dir)? {
            fs::rename(data_dir.join(&shard), old.join(&shard))?;
        }
        sync_dir(&old)?;
        sync_dir(data_dir)?;
        write_atomically(&ready, PHASE, b"new\n")?;
    }
    for shard in staged {
        fs::rename(ready.join(&shard), data_dir.join(&shard))?;
    }
    sync_dir(data_dir)?;
    // Absent only when an earlier finish got this far: the count is written.
    if let Some(count) = shards_file_read(&ready)? {
        shards_file_write(data_dir, count)?;
    }
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    let trash = data_dir.join(TRASH);
    fs::rename(&ready, &trash)?;
    sync_dir(data_dir)?;
    fs::remove_dir_all(&trash)?;
    sync_dir(data_dir)?;
    Ok(true)
}

/// The `shard-NNN` directory names in `dir`.
fn shard_dirs(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && !name.contains('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

/// Appends records to a new shard's segments, rolling at `segment_bytes`.
struct SegmentWriter {
    dir: std::path::PathBuf,
    segment_bytes: u64,
    file: File,
    first_offset: u64,
    length: u64,
}

impl SegmentWriter {
    fn create(dir: &Path, segment_bytes: u64) -> io::Result<SegmentWriter> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new().write(true).create_new(true).open(dir.join(segment_name(0)))?;
        Ok(SegmentWriter { dir: dir.to_path_buf(), segment_bytes, file, first_offset: 0, length: 0 })
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.length > 0 && self.length + record.len() as u64 > self.segment_bytes {
            self.file.sync_data()?;
            self.first_offset += self.length;
            self.length = 0;
            let path = self.dir.join(segment_name(self.first_offset));
            self.file = OpenOptions::new().write(true).create_new(true).open(path)?;
        }
        self.file.write_all(record)?;
        self.length += record.len() as u64;
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        self.file.sync_data()?;
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests;
