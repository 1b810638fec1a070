//! One shard's key-value state.
//!
//! A [`KvShard`] is owned by exactly one core and never shared. It is driven
//! by [`Op`] values and answers [`Outcome`] values; the caller supplies the
//! wall-clock time in milliseconds since the Unix epoch, which keeps expiry
//! deterministic under test.
//!
//! The shard is a keydir (Bitcask's name): every live key has an entry with
//! its record's [`Location`] in the log, its entity tag, content type and
//! expiry. Values are cached within the shard's share of `--cache-bytes`
//! and evicted by [`S3Fifo`]; an entry whose value was evicted answers a
//! read with [`Outcome::Cold`], and the caller reads the value back from
//! its segment and hands it in with [`KvShard::fill`]. A value is only
//! evicted once its record is durable (the caller says how far that is),
//! so every evicted value can be read back. Keys and their entries always
//! stay in memory (about [`ENTRY_OVERHEAD_BYTES`] plus the key each).

use std::collections::BTreeSet;

use bytes::Bytes;
use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;

use crate::compaction::Location;
use crate::conditions::{Conditions, Etag, Verdict};
use crate::evict::{Residents, S3Fifo, Slot};

/// Longest key in bytes, after percent-decoding (docs/spec.md §2).
pub const KEY_BYTES_MAX: usize = 1024;

/// Memory of one keydir entry besides its key: the map slot (key and entry
/// handles, tag, expiry, location, cache slot), allocator headers, the
/// expiry index node and the eviction queue's entry. Layout: 32 (key
/// `Bytes`) + 112 (`Entry`) + 1 control byte at hashbrown's load factor,
/// 16 for S3-FIFO's queue entry, about 32 of allocator headers, rounded up.
/// Reported, not budgeted: `--cache-bytes` bounds values.
pub const ENTRY_OVERHEAD_BYTES: u64 = 256;

/// The content type stored when a PUT names none.
pub const CONTENT_TYPE_DEFAULT: &[u8] = b"application/octet-stream";

/// Content types common enough to keep one static copy of. A stored value
/// whose type is one of these shares it: no allocation per entry, and
/// handing it out costs no reference-count update.
const CONTENT_TYPES_INTERNED: [&[u8]; 13] = [
    CONTENT_TYPE_DEFAULT,
    crate::queued::QUEUED_CONTENT_TYPE,
    crate::queued::STATUS_CONTENT_TYPE,
    crate::queued::LEGACY_QUEUED_CONTENT_TYPE,
    b"application/json",
    b"application/x-www-form-urlencoded",
    b"text/plain",
    b"text/plain; charset=utf-8",
    b"text/html; charset=utf-8",
    b"application/xml",
    b"application/cbor",
    b"application/msgpack",
    b"application/x-protobuf",
];

/// Returns the static copy of a common content type, else `content_type`.
fn interned(content_type: Bytes) -> Bytes {
    match CONTENT_TYPES_INTERNED.iter().find(|&&known| known == &content_type[..]) {
        Some(known) => Bytes::from_static(known),
        None => content_type,
    }
}

/// Whether a content type costs memory of its own (it is not interned).
fn content_type_charged(content_type: &[u8]) -> bool {
    !CONTENT_TYPES_INTERNED.contains(&content_type)
}

/// What a resident value costs the cache's budget: its bytes, and its
/// content type's unless interned. An uncommon content type is held only
/// while its value is: an evicted entry keeps none (the record has it), so
/// the keydir's content types stay within `--cache-bytes` too.
fn charge(value: &[u8], content_type: &[u8]) -> u64 {
    let type_bytes = if content_type_charged(content_type) { content_type.len() } else { 0 };
    (value.len() + type_bytes) as u64
}

/// An entry's content type once its value leaves memory: interned ones
/// stay, others are read back with the value (an empty one means that).
fn content_type_when_cold(content_type: Bytes) -> Bytes {
    let content_type = interned(content_type);
    if content_type_charged(&content_type) {
        Bytes::new()
    } else {
        content_type
    }
}

/// A request to a shard, produced by the HTTP layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// GET and HEAD.
    Get {
        key: Bytes,
        conditions: Conditions,
    },
    Put {
        key: Bytes,
        value: Bytes,
        content_type: Bytes,
        /// Relative time to live; the owner turns it into an absolute expiry
        /// with its own clock reading.
        ttl_ms: Option<u64>,
        conditions: Conditions,
    },
    Delete {
        key: Bytes,
        conditions: Conditions,
    },
}

impl Op {
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key, .. } | Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// A shard's answer; the HTTP layer maps each variant to a status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Value {
        value: Bytes,
        content_type: Bytes,
        etag: Etag,
    },
    NotModified {
        etag: Etag,
    },
    NotFound,
    /// `expires_at_ms` is the absolute expiry set, for the log record.
    Stored {
        etag: Etag,
        created: bool,
        expires_at_ms: Option<u64>,
    },
    Deleted,
    PreconditionFailed,
    /// The value was evicted from memory: read it (and its content type)
    /// from its record at `location`, then [`KvShard::fill`] it back.
    Cold {
        location: Location,
        etag: Etag,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    /// None: evicted; the record at `location` holds it.
    value: Option<Bytes>,
    content_type: Bytes,
    etag: Etag,
    expires_at_ms: Option<u64>,
    /// The log record holding this value ([`Location::NONE`]: not logged).
    location: Location,
    /// The cache's bookkeeping for the value (kept here: a hit costs no
    /// lookup in the cache, and the cache keeps no index of its own).
    slot: Slot,
}

impl Entry {
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// An entry read back at start, with or without its value.
struct Restored {
    key: Bytes,
    value: Option<Bytes>,
    content_type: Bytes,
    etag: Etag,
    expires_at_ms: Option<u64>,
    location: Location,
}

/// A value about to be stored, with where its record goes.
struct Stored {
    key: Bytes,
    value: Bytes,
    content_type: Bytes,
    expires_at_ms: Option<u64>,
    location: Location,
}

/// Partitions of a shard's table. hashbrown grows a table by rehashing all
/// of it at once, which stalled the event loop for 100-250 ms at a million
/// keys (measured: `shardgate_request_duration_seconds` during a preload).
/// With 64 partitions one growth rehashes a 64th of the keys.
const PARTITIONS: usize = 64;

type Table = HashTable<(Bytes, Entry)>;

/// One shard's keydir, cached values and expiry index.
pub struct KvShard {
    /// Entries, spread over partitions by bits 40..46 of the key's hash:
    /// hashbrown takes bucket indexes from the low bits and its tag from the
    /// top seven, so the partition must come from neither.
    partitions: Box<[Table]>,
    hasher: DefaultHashBuilder,
    books: Books,
    bytes_max: u64,
    /// Log offset up to which records are durable: values of records
    /// below it may be evicted.
    durable_end: u64,
    evictions: u64,
}

/// What the shard keeps about its entries besides the map; a separate struct
/// so it can be updated while an entry of the map is borrowed.
struct Books {
    keys: usize,
    /// Entries with a TTL, ordered by absolute expiry: lets expired entries be
    /// reclaimed oldest-first without scanning the map.
    expiry: BTreeSet<(u64, Bytes)>,
    /// Which values stay in memory, within `bytes_max`.
    cache: S3Fifo,
    /// Locations of records that stopped being needed (their entry was
    /// replaced, deleted or expired), for the log's segment book.
    dead: Vec<Location>,
}

impl Books {
    /// Releases what a removed entry held: its cached value, its expiry
    /// index slot, and its record (now dead in the log).
    fn forget(&mut self, key: &Bytes, entry: &Entry) {
        self.forget_keeping_cache(key, entry);
        self.cache.forget(&entry.slot, entry.value.as_ref().map_or(0, |v| charge(v, &entry.content_type)));
    }

    /// As `forget`, but the cached value's slot is handed on to the entry
    /// that replaces it (`S3Fifo::resize`).
    fn forget_keeping_cache(&mut self, key: &Bytes, entry: &Entry) {
        self.keys -= 1;
        if let Some(at) = entry.expires_at_ms {
            let removed = self.expiry.remove(&(at, key.clone()));
            assert!(removed, "expiry index out of step with the map");
        }
        if !entry.location.is_none() {
            self.dead.push(entry.location);
        }
    }
}

fn partition_of(hash: u64) -> usize {
    (hash >> 40) as usize & (PARTITIONS - 1)
}

/// The keydir as the cache sees it: finds a queued value by its key's hash
/// and slot generation, and drops evicted values.
struct Keydir<'a> {
    partitions: &'a mut [Table],
    durable_end: u64,
    evictions: &'a mut u64,
}

impl Keydir<'_> {
    fn entry(&mut self, hash: u64, generation: u32) -> Option<&mut Entry> {
        let found = self.partitions[partition_of(hash)]
            .find_mut(hash, |(_, e)| e.slot.is_held() && e.slot.generation == generation);
        found.map(|(_, e)| e)
    }
}

impl Residents for Keydir<'_> {
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)> {
        let durable_end = self.durable_end;
        let entry = self.entry(hash, generation)?;
        let bytes = entry.value.as_ref().map_or(0, |v| charge(v, &entry.content_type));
        let may_evict = !entry.location.is_none() && entry.location.end() <= durable_end;
        Some((&mut entry.slot, bytes, may_evict))
    }

    fn evict(&mut self, hash: u64, generation: u32) {
        if let Some(entry) = self.entry(hash, generation) {
            entry.value = None;
            entry.content_type = content_type_when_cold(std::mem::take(&mut entry.content_type));
            entry.slot = Slot::default();
            *self.evictions += 1;
        }
    }
}

impl KvShard {
    pub fn new(bytes_max: u64) -> KvShard {
        KvShard {
            partitions: (0..PARTITIONS).map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            books: Books { keys: 0, expiry: BTreeSet::new(), cache: S3Fifo::new(bytes_max), dead: Vec::new() },
            bytes_max,
            durable_end: 0,
            evictions: 0,
        }
    }

    /// Bytes of values held in memory.
    pub fn bytes_held(&self) -> u64 {
        self.books.cache.bytes()
    }

    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    pub fn keys(&self) -> usize {
        self.books.keys
    }

    /// Values evicted from memory so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Values whose records end at or before `end` are on disk and may be
    /// evicted.
    pub fn set_durable_end(&mut self, end: u64) {
        self.durable_end = self.durable_end.max(end);
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Applies one operation at time `now_ms` and returns its outcome.
    pub fn handle(&mut self, now_ms: u64, op: Op) -> Outcome {
        self.handle_at(now_ms, op, Location::NONE)
    }

    /// As [`KvShard::handle`], for a write whose log record, if it is
    /// written, will sit at `location`.
    pub fn handle_at(&mut self, now_ms: u64, op: Op, location: Location) -> Outcome {
        assert!(!op.key().is_empty() && op.key().len() <= KEY_BYTES_MAX, "key length unchecked");
        match op {
            Op::Get { key, conditions } => self.get(now_ms, &key, &conditions),
            Op::Put { key, value, content_type, ttl_ms, conditions } => {
                let expires_at_ms = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
                self.put(now_ms, Stored { key, value, content_type, expires_at_ms, location }, &conditions)
            }
            Op::Delete { key, conditions } => self.delete(now_ms, &key, &conditions),
        }
    }

    /// Returns the live entry of `key`, dropping it if it has expired; one
    /// hash probe either way.
    fn live(&mut self, now_ms: u64, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        let KvShard { partitions, books, .. } = self;
        match partitions[partition_of(hash)].find_entry(hash, |(k, _)| &k[..] == key) {
            Err(_) => None,
            Ok(occupied) if occupied.get().1.is_expired(now_ms) => {
                let ((key, entry), _) = occupied.remove();
                books.forget(&key, &entry);
                None
            }
            Ok(occupied) => Some(&mut occupied.into_mut().1),
        }
    }

    /// Reads a key: the same as applying `Op::Get`, without needing an owned
    /// key, so a read on the owner core allocates nothing.
    pub fn get(&mut self, now_ms: u64, key: &[u8], conditions: &Conditions) -> Outcome {
        assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "key length unchecked");
        let entry = self.live(now_ms, key);
        match conditions.evaluate(entry.as_ref().map(|e| e.etag), true) {
            Verdict::Failed => Outcome::PreconditionFailed,
            Verdict::NotModified => Outcome::NotModified { etag: entry.expect("matched").etag },
            Verdict::Proceed => match entry {
                Some(entry) => match &entry.value {
                    Some(value) => {
                        entry.slot.touch();
                        Outcome::Value {
                            value: value.clone(),
                            content_type: entry.content_type.clone(),
                            etag: entry.etag,
                        }
                    }
                    None => Outcome::Cold { location: entry.location, etag: entry.etag },
                },
                None => Outcome::NotFound,
            },
        }
    }

    fn put(&mut self, now_ms: u64, stored: Stored, conditions: &Conditions) -> Outcome {
        let Stored { key, value, content_type, expires_at_ms, location } = stored;
        let current = self.live(now_ms, &key).map(|e| e.etag);
        if conditions.evaluate(current, false) != Verdict::Proceed {
            return Outcome::PreconditionFailed;
        }
        let hash = self.hash(&key);
        let replaced = match self.partitions[partition_of(hash)].find_entry(hash, |(k, _)| *k == key) {
            Ok(occupied) => {
                let ((old_key, old), _) = occupied.remove();
                self.books.forget_keeping_cache(&old_key, &old);
                Some(old)
            }
            Err(_) => None,
        };
        let etag = Etag::of(&content_type, &value);
        let content_type = interned(content_type);
        let bytes = charge(&value, &content_type);
        let slot = match &replaced {
            // A cached value replaced in place keeps its slot; the write
            // counts as a read of it.
            Some(old) if old.slot.is_held() => {
                let old_bytes = old.value.as_ref().map_or(0, |v| charge(v, &old.content_type));
                self.books.cache.resize(&old.slot, old_bytes, bytes);
                let mut slot = old.slot;
                slot.touch();
                slot
            }
            _ => self.books.cache.admit(hash, bytes),
        };
        let entry = Entry { value: Some(value), content_type, etag, expires_at_ms, location, slot };
        self.insert(key, entry);
        self.make_room();
        Outcome::Stored { etag, created: replaced.is_none(), expires_at_ms }
    }

    /// Evicts values (durable ones only) until the cache fits its budget.
    fn make_room(&mut self) {
        let KvShard { partitions, books, durable_end, evictions, .. } = self;
        let mut keydir = Keydir { partitions, durable_end: *durable_end, evictions };
        books.cache.make_room(&mut keydir);
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        if let Some(at) = entry.expires_at_ms {
            self.books.expiry.insert((at, key.clone()));
        }
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        self.partitions[partition_of(hash)].insert_unique(hash, (key, entry), |(k, _)| hasher.hash_one(&k[..]));
        self.books.keys += 1;
    }

    fn delete(&mut self, now_ms: u64, key: &[u8], conditions: &Conditions) -> Outcome {
        let current = self.live(now_ms, key).map(|e| e.etag);
        if current.is_none() && conditions.if_match.is_none() {
            return Outcome::NotFound;
        }
        if conditions.evaluate(current, false) != Verdict::Proceed {
            return Outcome::PreconditionFailed;
        }
        self.remove(key);
        Outcome::Deleted
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        let occupied = self.partitions[partition_of(hash)].find_entry(hash, |(k, _)| &k[..] == key).ok()?;
        let ((key, entry), _) = occupied.remove();
        self.books.forget(&key, &entry);
        Some(entry)
    }

    /// Puts a recovered value back without preconditions: it was accepted
    /// once. A value already expired at `now_ms` is skipped. Restored
    /// records are durable, so the cache may evict them at once.
    pub fn restore(
        &mut self,
        now_ms: u64,
        key: Bytes,
        value: Bytes,
        content_type: Bytes,
        expires_at_ms: Option<u64>,
        location: Location,
    ) {
        let etag = Etag::of(&content_type, &value);
        let recovered = Restored { key, value: Some(value), content_type, etag, expires_at_ms, location };
        self.restore_entry(now_ms, recovered);
    }

    /// Puts back a recovered entry whose value stays on disk (its segment
    /// was recovered from a hint file): the first read loads it.
    pub fn restore_cold(
        &mut self,
        now_ms: u64,
        key: Bytes,
        content_type: Bytes,
        etag: Etag,
        expires_at_ms: Option<u64>,
        location: Location,
    ) {
        self.restore_entry(now_ms, Restored { key, value: None, content_type, etag, expires_at_ms, location });
    }

    fn restore_entry(&mut self, now_ms: u64, recovered: Restored) {
        let Restored { key, value, content_type, etag, expires_at_ms, location } = recovered;
        assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "recovered key length unchecked");
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            return;
        }
        self.remove(&key);
        self.set_durable_end(location.end());
        let content_type = match &value {
            Some(_) => interned(content_type),
            None => content_type_when_cold(content_type),
        };
        let slot = match &value {
            Some(value) => self.books.cache.admit(self.hasher.hash_one(&key[..]), charge(value, &content_type)),
            None => Slot::default(),
        };
        let entry = Entry { value, content_type, etag, expires_at_ms, location, slot };
        self.insert(key, entry);
        self.make_room();
    }

    /// Hands back a value read from its record at `location`, with the
    /// record's content type. It is cached again if the key still points at
    /// that record; returns whether it did.
    pub fn fill(&mut self, key: &[u8], location: Location, value: Bytes, content_type: Bytes) -> bool {
        let hash = self.hash(key);
        let found = self.partitions[partition_of(hash)].find_mut(hash, |(k, _)| &k[..] == key);
        let Some((_, entry)) = found else {
            return false;
        };
        if entry.location != location || entry.value.is_some() {
            return false;
        }
        entry.content_type = interned(content_type);
        entry.slot = self.books.cache.admit(hash, charge(&value, &entry.content_type));
        entry.value = Some(value);
        self.make_room();
        true
    }

    /// Moves the locations of records that stopped being needed into `into`.
    pub fn drain_dead(&mut self, into: &mut Vec<Location>) {
        into.append(&mut self.books.dead);
    }

    /// Where the live value of `key` is logged, if it is live at `now_ms`.
    pub fn live_location(&mut self, now_ms: u64, key: &[u8]) -> Option<Location> {
        self.live(now_ms, key).map(|entry| entry.location)
    }

    /// Points `key`'s entry at a copy of its record, if it still is the
    /// record at `from` (compaction copies a record, then moves the entry).
    /// Returns whether it moved.
    pub fn relocate(&mut self, key: &[u8], from: Location, to: Location) -> bool {
        let hash = self.hash(key);
        let found = self.partitions[partition_of(hash)].find_mut(hash, |(k, _)| &k[..] == key);
        match found {
            Some((_, entry)) if entry.location == from => {
                entry.location = to;
                true
            }
            _ => false,
        }
    }

    /// The live keys starting with `prefix` with their content types,
    /// unordered (a full scan: for start-up, where the gateway finds its
    /// queued writes).
    pub fn keys_with_prefix(&self, now_ms: u64, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.partitions
            .iter()
            .flat_map(|table| table.iter())
            .filter(|(key, entry)| key.starts_with(prefix) && !entry.is_expired(now_ms))
            .map(|(key, entry)| (key.clone(), entry.content_type.clone()))
            .collect()
    }

    /// Drops up to `entries_max` entries whose expiry is at or before
    /// `now_ms`, oldest first. Returns how many were dropped.
    pub fn sweep_expired(&mut self, now_ms: u64, entries_max: usize) -> usize {
        let mut dropped = 0;
        while dropped < entries_max {
            let key = match self.books.expiry.first() {
                Some((at, key)) if *at <= now_ms => key.clone(),
                _ => break,
            };
            self.remove(&key).expect("indexed entry exists");
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests;
