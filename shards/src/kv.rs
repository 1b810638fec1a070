//! One shard's key-value state.
//!
//! A [`KvShard`] is owned by exactly one core and never shared. It is driven
//! by [`Op`] values and answers [`Outcome`] values; the caller supplies the
//! wall-clock time in milliseconds since the Unix epoch, which keeps expiry
//! deterministic under test.
//!
//! Memory: every entry is charged `key + value + content type +`
//! [`ENTRY_OVERHEAD_BYTES`] against the shard's budget. Until the durable log
//! exists a value lives nowhere else, so a write that would pass the budget is
//! refused ([`Outcome::InsufficientStorage`]) rather than evicting data.

use std::collections::BTreeSet;

use bytes::Bytes;
use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;

use crate::compaction::Location;
use crate::conditions::{Conditions, Etag, Verdict};

/// Longest key in bytes, after percent-decoding (SPEC §2).
pub const KEY_BYTES_MAX: usize = 1024;

/// Fixed per-entry charge covering the map slot (key and entry handles, tag,
/// expiry), the three heap allocations' headers and the expiry index node.
/// Measured layout: 32 (key `Bytes`) + 96 (`Entry`) + 1 control byte, plus
/// about 16 bytes of allocator header per allocation, rounded up.
pub const ENTRY_OVERHEAD_BYTES: u64 = 192;

/// How many expired entries a write under memory pressure may reclaim before
/// giving up, bounding the work one request can trigger.
pub const SWEEP_ON_PRESSURE_ENTRIES_MAX: usize = 256;

/// The content type stored when a PUT names none.
pub const CONTENT_TYPE_DEFAULT: &[u8] = b"application/octet-stream";

/// Content types common enough to keep one static copy of. A stored value
/// whose type is one of these shares it: no allocation per entry, and
/// handing it out costs no reference-count update.
const CONTENT_TYPES_INTERNED: [&[u8]; 10] = [
    CONTENT_TYPE_DEFAULT,
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
    /// The write would take the shard past its memory budget.
    InsufficientStorage {
        entry_bytes: u64,
        budget_bytes: u64,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    value: Bytes,
    content_type: Bytes,
    etag: Etag,
    expires_at_ms: Option<u64>,
    /// The log record holding this value ([`Location::NONE`]: not logged).
    location: Location,
}

impl Entry {
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A value about to be stored, with where its record goes.
struct Stored {
    key: Bytes,
    value: Bytes,
    content_type: Bytes,
    expires_at_ms: Option<u64>,
    location: Location,
}

fn entry_bytes(key: &[u8], value: &[u8], content_type: &[u8]) -> u64 {
    (key.len() + value.len() + content_type.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

/// Partitions of a shard's table. hashbrown grows a table by rehashing all
/// of it at once, which stalled the event loop for 100-250 ms at a million
/// keys (measured: `shardgate_request_duration_seconds` during a preload).
/// With 64 partitions one growth rehashes a 64th of the keys.
const PARTITIONS: usize = 64;

/// One shard's keys, values and expiry index.
pub struct KvShard {
    /// Entries, spread over partitions by bits 40..46 of the key's hash:
    /// hashbrown takes bucket indexes from the low bits and its tag from the
    /// top seven, so the partition must come from neither.
    partitions: Box<[HashTable<(Bytes, Entry)>]>,
    hasher: DefaultHashBuilder,
    keys: usize,
    books: Books,
    bytes_max: u64,
    /// Locations of records that stopped being needed (their entry was
    /// replaced, deleted or expired), for the log's segment book.
    dead: Vec<Location>,
}

fn partition_of(hash: u64) -> usize {
    (hash >> 40) as usize & (PARTITIONS - 1)
}

/// What the shard keeps about its entries besides the map; a separate struct
/// so it can be updated while an entry of the map is borrowed.
struct Books {
    bytes_held: u64,
    /// Entries with a TTL, ordered by absolute expiry: lets expired entries be
    /// reclaimed oldest-first without scanning the map.
    expiry: BTreeSet<(u64, Bytes)>,
}

impl Books {
    fn add(&mut self, key: &Bytes, entry: &Entry) {
        self.bytes_held += entry_bytes(key, &entry.value, &entry.content_type);
        if let Some(at) = entry.expires_at_ms {
            self.expiry.insert((at, key.clone()));
        }
    }

    /// Releases the budget and the expiry index slot of a removed entry.
    fn forget(&mut self, key: &Bytes, entry: &Entry) {
        let bytes = entry_bytes(key, &entry.value, &entry.content_type);
        assert!(self.bytes_held >= bytes);
        self.bytes_held -= bytes;
        if let Some(at) = entry.expires_at_ms {
            let removed = self.expiry.remove(&(at, key.clone()));
            assert!(removed, "expiry index out of step with the map");
        }
    }
}

impl KvShard {
    pub fn new(bytes_max: u64) -> KvShard {
        KvShard {
            partitions: (0..PARTITIONS).map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            keys: 0,
            books: Books { bytes_held: 0, expiry: BTreeSet::new() },
            bytes_max,
            dead: Vec::new(),
        }
    }

    /// Bytes charged against the budget by the entries held now.
    pub fn bytes_held(&self) -> u64 {
        self.books.bytes_held
    }

    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    pub fn keys(&self) -> usize {
        self.keys
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
        let outcome = match op {
            Op::Get { key, conditions } => self.get(now_ms, &key, &conditions),
            Op::Put { key, value, content_type, ttl_ms, conditions } => {
                let expires_at_ms = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
                self.put(now_ms, Stored { key, value, content_type, expires_at_ms, location }, &conditions)
            }
            Op::Delete { key, conditions } => self.delete(now_ms, &key, &conditions),
        };
        assert!(self.books.bytes_held <= self.bytes_max || self.keys == 0 || self.bytes_max == 0);
        outcome
    }

    /// Returns the live entry of `key`, dropping it if it has expired; one
    /// hash probe either way.
    fn live(&mut self, now_ms: u64, key: &[u8]) -> Option<&Entry> {
        let hash = self.hash(key);
        let table = &mut self.partitions[partition_of(hash)];
        match table.find_entry(hash, |(k, _)| &k[..] == key) {
            Err(_) => None,
            Ok(occupied) if occupied.get().1.is_expired(now_ms) => {
                let ((key, entry), _) = occupied.remove();
                self.keys -= 1;
                self.books.forget(&key, &entry);
                if !entry.location.is_none() {
                    self.dead.push(entry.location);
                }
                None
            }
            Ok(occupied) => Some(&occupied.into_mut().1),
        }
    }

    /// Reads a key: the same as applying `Op::Get`, without needing an owned
    /// key, so a read on the owner core allocates nothing.
    pub fn get(&mut self, now_ms: u64, key: &[u8], conditions: &Conditions) -> Outcome {
        assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "key length unchecked");
        let entry = self.live(now_ms, key);
        match conditions.evaluate(entry.map(|e| e.etag), true) {
            Verdict::Failed => Outcome::PreconditionFailed,
            Verdict::NotModified => Outcome::NotModified { etag: entry.expect("matched").etag },
            Verdict::Proceed => match entry {
                Some(e) => {
                    Outcome::Value { value: e.value.clone(), content_type: e.content_type.clone(), etag: e.etag }
                }
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
        let bytes_new = entry_bytes(&key, &value, &content_type);
        if !self.fits(&key, bytes_new) {
            self.sweep_expired(now_ms, SWEEP_ON_PRESSURE_ENTRIES_MAX);
            if !self.fits(&key, bytes_new) {
                return Outcome::InsufficientStorage { entry_bytes: bytes_new, budget_bytes: self.bytes_max };
            }
        }
        let created = self.remove(&key).is_none();
        let etag = Etag::of(&content_type, &value);
        let content_type = interned(content_type);
        let entry = Entry { value, content_type, etag, expires_at_ms, location };
        self.books.add(&key, &entry);
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        self.partitions[partition_of(hash)].insert_unique(hash, (key, entry), |(k, _)| hasher.hash_one(&k[..]));
        self.keys += 1;
        Outcome::Stored { etag, created, expires_at_ms }
    }

    /// True when replacing `key`'s entry by one of `bytes_new` stays within budget.
    fn fits(&self, key: &[u8], bytes_new: u64) -> bool {
        let hash = self.hash(key);
        let found = self.partitions[partition_of(hash)].find(hash, |(k, _)| &k[..] == key);
        let bytes_old = found.map_or(0, |(k, e)| entry_bytes(k, &e.value, &e.content_type));
        self.books.bytes_held - bytes_old + bytes_new <= self.bytes_max
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
        self.keys -= 1;
        self.books.forget(&key, &entry);
        if !entry.location.is_none() {
            self.dead.push(entry.location);
        }
        Some(entry)
    }

    /// Puts a recovered value back without preconditions or the budget
    /// check: it was accepted once, and losing it is not an option. A value
    /// already expired at `now_ms` is skipped.
    pub fn restore(
        &mut self,
        now_ms: u64,
        key: Bytes,
        value: Bytes,
        content_type: Bytes,
        expires_at_ms: Option<u64>,
        location: Location,
    ) {
        assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "recovered key length unchecked");
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            return;
        }
        self.remove(&key);
        let etag = Etag::of(&content_type, &value);
        let entry = Entry { value, content_type: interned(content_type), etag, expires_at_ms, location };
        self.books.add(&key, &entry);
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        self.partitions[partition_of(hash)].insert_unique(hash, (key, entry), |(k, _)| hasher.hash_one(&k[..]));
        self.keys += 1;
    }

    /// Moves the locations of records that stopped being needed into `into`.
    pub fn drain_dead(&mut self, into: &mut Vec<Location>) {
        into.append(&mut self.dead);
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
