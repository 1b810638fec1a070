//! S3-FIFO: which values stay in memory (Yang et al., "FIFO queues are all
//! you need for cache eviction", SOSP 2023).
//!
//! Three FIFO queues: a small one (10% of the bytes) that new values enter,
//! a main one (90%), and a ghost queue of recently evicted keys (no
//! values). A value evicted from the small queue moves to main only if it
//! was read again while there; otherwise it leaves and its key becomes a
//! ghost, and a ghost that comes back enters main directly. Main evicts
//! CLOCK-style: a value read since it last passed the head gets another
//! round. So a scan of keys read once flows through the small queue and
//! never displaces the hot set (scan resistance), at the cost of FIFO
//! queues only: no list surgery on a hit, just a saturating counter.
//! Chosen over LRU and CLOCK by measurement on a Zipf 0.99 trace
//! (`shardgate-bench eviction`, README.md).
//!
//! The read counters live with the caller's entries ([`Residents`]): a hit
//! is one increment on the entry the caller already holds, and the cache
//! is consulted only when values come in or must go.
//!
//! Queues hold keys with a generation; removing a key only drops its index
//! entry, and stale queue slots are skipped when they reach the head (and
//! compacted away when they outnumber the live ones).

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashMap};

/// Share of the capacity the small queue may hold.
const SMALL_SHARE_PERCENT: u64 = 10;
/// Queue slots one insert may examine while making room.
const EVICT_ATTEMPTS_MAX: usize = 256;
/// Reads counted per value (2 bits).
pub const FREQ_MAX: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    bytes: u64,
    queue: Queue,
    generation: u32,
}

/// What the cache asks of the owner of the values it manages.
pub trait Residents<K> {
    /// Reads of `key`'s value since it came in or last passed a queue's
    /// head (the owner counts them, up to [`FREQ_MAX`]).
    fn freq(&mut self, key: &K) -> u8;
    fn set_freq(&mut self, key: &K, freq: u8);
    /// Whether the value may be dropped now (a value not yet durable may not).
    fn may_evict(&mut self, key: &K) -> bool;
}

/// Partitions of the index: a hash map grows by rehashing all of it at
/// once, which at a million keys stalls a core for 100 ms and more (the
/// same reason the keydir is partitioned); one partition's growth is 1/64.
const PARTITIONS: usize = 64;

/// A hash map split into [`PARTITIONS`] by hash bits the maps do not use.
struct Index<K> {
    parts: Box<[HashMap<K, Meta>]>,
    hasher: DefaultHashBuilder,
    len: usize,
}

impl<K: Hash + Eq> Index<K> {
    fn new() -> Index<K> {
        Index {
            parts: (0..PARTITIONS).map(|_| HashMap::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }

    fn part<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) >> 40) as usize & (PARTITIONS - 1)
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&Meta>
    where
        K: Borrow<Q>,
    {
        self.parts[self.part(key)].get(key)
    }

    fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut Meta>
    where
        K: Borrow<Q>,
    {
        let part = self.part(key);
        self.parts[part].get_mut(key)
    }

    fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    fn insert(&mut self, key: K, meta: Meta) {
        let part = self.part(&key);
        if self.parts[part].insert(key, meta).is_none() {
            self.len += 1;
        }
    }

    fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<Meta>
    where
        K: Borrow<Q>,
    {
        let part = self.part(key);
        let removed = self.parts[part].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// S3-FIFO over keys `K` with sizes in bytes.
pub struct S3Fifo<K> {
    index: Index<K>,
    small: VecDeque<(K, u32)>,
    main: VecDeque<(K, u32)>,
    ghost: VecDeque<u64>,
    ghosts: HashMap<u64, u32>,
    hasher: DefaultHashBuilder,
    small_bytes: u64,
    main_bytes: u64,
    capacity_bytes: u64,
    generation: u32,
}

impl<K: Hash + Eq + Clone> S3Fifo<K> {
    pub fn new(capacity_bytes: u64) -> S3Fifo<K> {
        S3Fifo {
            index: Index::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghosts: HashMap::new(),
            hasher: DefaultHashBuilder::default(),
            small_bytes: 0,
            main_bytes: 0,
            capacity_bytes,
            generation: 0,
        }
    }

    /// Bytes of the values held.
    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.index.contains_key(key)
    }

    /// Holds a new value of `bytes` (the key must not be held), as a miss
    /// does in S3-FIFO: its owner sets its read count to 0. Values are
    /// evicted until it fits; `evicted` receives their keys. A value the
    /// owner refuses to drop is kept and counted as read. Returns false when
    /// nothing more could be evicted and the cache is over its capacity
    /// for now.
    pub fn insert(&mut self, key: K, bytes: u64, evicted: &mut Vec<K>, residents: &mut impl Residents<K>) -> bool {
        debug_assert!(!self.index.contains_key(&key), "insert of a held key");
        let ghost = self.hasher.hash_one(&key);
        let to_main = self.ghosts.contains_key(&ghost);
        self.generation = self.generation.wrapping_add(1);
        let queue = if to_main { Queue::Main } else { Queue::Small };
        self.index.insert(key.clone(), Meta { bytes, queue, generation: self.generation });
        match queue {
            Queue::Small => {
                self.small.push_back((key, self.generation));
                self.small_bytes += bytes;
            }
            Queue::Main => {
                self.main.push_back((key, self.generation));
                self.main_bytes += bytes;
            }
        }
        self.make_room(evicted, residents)
    }

    /// Evicts until the values fit, with bounded work: when values are
    /// refused (not yet durable) the cache stays over capacity for a while
    /// and later inserts continue; refusals are bounded by the log's
    /// unflushed backlog.
    fn make_room(&mut self, evicted: &mut Vec<K>, residents: &mut impl Residents<K>) -> bool {
        let mut budget = EVICT_ATTEMPTS_MAX;
        while self.bytes() > self.capacity_bytes && budget > 0 {
            budget -= 1;
            let small_over = self.small_bytes * 100 > self.capacity_bytes * SMALL_SHARE_PERCENT;
            let progressed = if small_over || self.main.is_empty() {
                self.evict_small(evicted, residents)
            } else {
                self.evict_main(evicted, residents)
            };
            if !progressed && self.small.is_empty() && self.main.is_empty() {
                break;
            }
        }
        self.compact_queues();
        self.bytes() <= self.capacity_bytes
    }

    /// A held value was replaced by one of `bytes`: it keeps its place in
    /// its queue (no stale slot is left behind; the owner counts the write
    /// as a read). Evicts as [`S3Fifo::insert`] does when it grew. Returns
    /// false when the key is not held (insert it instead).
    pub fn replace<Q: Hash + Eq + ?Sized>(
        &mut self,
        key: &Q,
        bytes: u64,
        evicted: &mut Vec<K>,
        residents: &mut impl Residents<K>,
    ) -> bool
    where
        K: Borrow<Q>,
    {
        let Some(meta) = self.index.get_mut(key) else {
            return false;
        };
        let old = meta.bytes;
        meta.bytes = bytes;
        match meta.queue {
            Queue::Small => self.small_bytes = self.small_bytes - old + bytes,
            Queue::Main => self.main_bytes = self.main_bytes - old + bytes,
        }
        self.make_room(evicted, residents);
        true
    }

    /// Stops holding `key` (its value was dropped by its owner: deleted or
    /// expired). Returns whether it was held.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        let Some(meta) = self.index.remove(key) else {
            return false;
        };
        match meta.queue {
            Queue::Small => self.small_bytes -= meta.bytes,
            Queue::Main => self.main_bytes -= meta.bytes,
        }
        true
    }

    /// The live entry a queue slot names, if it is still current.
    fn current(&self, key: &K, generation: u32) -> Option<Meta> {
        self.index.get(key).filter(|m| m.generation == generation).copied()
    }

    fn evict_small(&mut self, evicted: &mut Vec<K>, residents: &mut impl Residents<K>) -> bool {
        let Some((key, generation)) = self.small.pop_front() else {
            return false;
        };
        let Some(meta) = self.current(&key, generation) else {
            return true;
        };
        self.small_bytes -= meta.bytes;
        if residents.freq(&key) > 0 || !residents.may_evict(&key) {
            // Read while on probation (or pinned): promote to main.
            residents.set_freq(&key, 0);
            self.generation = self.generation.wrapping_add(1);
            let moved = Meta { queue: Queue::Main, generation: self.generation, ..meta };
            self.index.insert(key.clone(), moved);
            self.main.push_back((key, self.generation));
            self.main_bytes += meta.bytes;
            return true;
        }
        self.index.remove(&key);
        self.remember_ghost(&key);
        evicted.push(key);
        true
    }

    fn evict_main(&mut self, evicted: &mut Vec<K>, residents: &mut impl Residents<K>) -> bool {
        let Some((key, generation)) = self.main.pop_front() else {
            return false;
        };
        let Some(meta) = self.current(&key, generation) else {
            return true;
        };
        let freq = residents.freq(&key);
        if freq > 0 || !residents.may_evict(&key) {
            residents.set_freq(&key, freq.saturating_sub(1));
            self.main.push_back((key, generation));
            return true;
        }
        self.main_bytes -= meta.bytes;
        self.index.remove(&key);
        evicted.push(key);
        true
    }

    /// Ghosts remember as many keys as main holds values, at least 64.
    fn remember_ghost(&mut self, key: &K) {
        let hash = self.hasher.hash_one(key);
        self.ghost.push_back(hash);
        *self.ghosts.entry(hash).or_insert(0) += 1;
        let ghosts_max = self.main.len().max(64);
        while self.ghost.len() > ghosts_max {
            let old = self.ghost.pop_front().expect("non-empty");
            if let Some(count) = self.ghosts.get_mut(&old) {
                *count -= 1;
                if *count == 0 {
                    self.ghosts.remove(&old);
                }
            }
        }
    }

    /// Drops stale queue slots once they outnumber the live ones.
    fn compact_queues(&mut self) {
        let index = &self.index;
        let stale = |queue: &VecDeque<(K, u32)>| queue.len() > 2 * index.len() + 64;
        if stale(&self.small) {
            self.small.retain(|(k, g)| index.get(k).is_some_and(|m| m.generation == *g));
        }
        if stale(&self.main) {
            self.main.retain(|(k, g)| index.get(k).is_some_and(|m| m.generation == *g));
        }
    }
}

#[cfg(test)]
mod tests;
