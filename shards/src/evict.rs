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
//! (`shardgate-bench eviction`, bench/README.md).
//!
//! The cache keeps no index of its own: each held value's [`Slot`] (queue,
//! generation, read counter) lives with the value in its owner's entry,
//! and the queues hold only the key's 64-bit hash and the slot's
//! generation, 16 bytes a value. The owner finds a queued value again by
//! hash and generation ([`Residents`]); a slot whose generation moved on
//! (the value was replaced, dropped or requeued) is stale and skipped when
//! it reaches a queue's head, and stale slots are compacted away when they
//! outnumber the live ones. A hit is one increment on the entry the owner
//! already holds. (Measured: a separate index keyed by the key cost 137 MiB
//! per million values.)

use std::collections::VecDeque;

use hashbrown::HashMap;

/// Share of the capacity the small queue may hold.
const SMALL_SHARE_PERCENT: u64 = 10;
/// Queue slots one insert may examine while making room.
const EVICT_ATTEMPTS_MAX: usize = 256;
/// Reads counted per value (2 bits).
pub const FREQ_MAX: u8 = 3;

/// Which queue a value is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Queue {
    /// Not held (evicted, or never cached).
    #[default]
    None,
    Small,
    Main,
}

/// What the cache knows of a held value; the owner keeps it beside the value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub queue: Queue,
    /// Names this stay in the queue; queued entries with another are stale.
    pub generation: u32,
    /// Reads since the value came in or last passed a queue's head.
    pub freq: u8,
}

impl Slot {
    /// Counts a read of the value.
    pub fn touch(&mut self) {
        self.freq = (self.freq + 1).min(FREQ_MAX);
    }

    pub fn is_held(&self) -> bool {
        self.queue != Queue::None
    }
}

/// The owner of the values: finds a queued value's slot again.
pub trait Residents {
    /// The slot of the value whose key hashes to `hash` and whose slot has
    /// `generation`, with the value's size and whether it may be dropped
    /// now (a value not yet durable may not). None when no such value is
    /// held (the queue entry is stale).
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)>;
    /// Drops the value of that slot (its key stays) and clears the slot.
    fn evict(&mut self, hash: u64, generation: u32);
}

/// S3-FIFO bookkeeping: queues of (key hash, generation) and byte counts.
pub struct S3Fifo {
    small: VecDeque<(u64, u32)>,
    main: VecDeque<(u64, u32)>,
    ghost: VecDeque<u64>,
    ghosts: HashMap<u64, u32>,
    small_bytes: u64,
    main_bytes: u64,
    held: usize,
    capacity_bytes: u64,
    generation: u32,
}

impl S3Fifo {
    pub fn new(capacity_bytes: u64) -> S3Fifo {
        S3Fifo {
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghosts: HashMap::new(),
            small_bytes: 0,
            main_bytes: 0,
            held: 0,
            capacity_bytes,
            generation: 0,
        }
    }

    /// Bytes of the values held.
    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    fn add_bytes(&mut self, queue: Queue, bytes: u64) {
        match queue {
            Queue::Small => self.small_bytes += bytes,
            Queue::Main => self.main_bytes += bytes,
            Queue::None => {}
        }
    }

    fn sub_bytes(&mut self, queue: Queue, bytes: u64) {
        match queue {
            Queue::Small => self.small_bytes -= bytes,
            Queue::Main => self.main_bytes -= bytes,
            Queue::None => {}
        }
    }

    /// Starts holding a new value of `bytes` whose key hashes to `hash`, as
    /// a miss does in S3-FIFO (unread so far). Returns the slot the owner
    /// must store with the value before the cache makes room: call
    /// [`S3Fifo::make_room`] next.
    pub fn admit(&mut self, hash: u64, bytes: u64) -> Slot {
        let queue = if self.ghosts.contains_key(&hash) { Queue::Main } else { Queue::Small };
        let generation = self.next_generation();
        match queue {
            Queue::Main => self.main.push_back((hash, generation)),
            _ => self.small.push_back((hash, generation)),
        }
        self.add_bytes(queue, bytes);
        self.held += 1;
        Slot { queue, generation, freq: 0 }
    }

    /// The held value of `slot` changed size (replaced in place: it keeps its
    /// place in its queue and no stale entry is left behind).
    pub fn resize(&mut self, slot: &Slot, old_bytes: u64, new_bytes: u64) {
        self.sub_bytes(slot.queue, old_bytes);
        self.add_bytes(slot.queue, new_bytes);
    }

    /// The owner dropped the held value of `slot` (deleted, expired, or
    /// replaced by one it admits anew).
    pub fn forget(&mut self, slot: &Slot, bytes: u64) {
        if slot.is_held() {
            self.sub_bytes(slot.queue, bytes);
            self.held -= 1;
        }
    }

    /// Evicts until the values fit, with bounded work: values the owner
    /// refuses (not yet durable) are kept and counted as read, and the
    /// cache may stay over capacity for a while; later calls continue.
    /// Returns whether the values fit.
    pub fn make_room(&mut self, residents: &mut impl Residents) -> bool {
        let mut budget = EVICT_ATTEMPTS_MAX;
        while self.bytes() > self.capacity_bytes && budget > 0 {
            budget -= 1;
            let small_over = self.small_bytes * 100 > self.capacity_bytes * SMALL_SHARE_PERCENT;
            if small_over || self.main.is_empty() {
                self.evict_small(residents);
            } else {
                self.evict_main(residents);
            }
            if self.small.is_empty() && self.main.is_empty() {
                break;
            }
        }
        self.compact_queues(residents);
        self.bytes() <= self.capacity_bytes
    }

    fn evict_small(&mut self, residents: &mut impl Residents) {
        let Some((hash, generation)) = self.small.pop_front() else {
            return;
        };
        let promoted = self.next_generation();
        let Some((slot, bytes, may_evict)) = residents.find(hash, generation) else {
            return; // Stale.
        };
        if slot.freq > 0 || !may_evict {
            // Read while on probation (or pinned): promote to main.
            *slot = Slot { queue: Queue::Main, generation: promoted, freq: 0 };
            self.small_bytes -= bytes;
            self.main_bytes += bytes;
            self.main.push_back((hash, promoted));
            return;
        }
        // The owner drops the value and clears its slot.
        self.small_bytes -= bytes;
        self.held -= 1;
        residents.evict(hash, generation);
        self.remember_ghost(hash);
    }

    fn evict_main(&mut self, residents: &mut impl Residents) {
        let Some((hash, generation)) = self.main.pop_front() else {
            return;
        };
        let Some((slot, bytes, may_evict)) = residents.find(hash, generation) else {
            return; // Stale.
        };
        if slot.freq > 0 || !may_evict {
            slot.freq = slot.freq.saturating_sub(1);
            self.main.push_back((hash, generation));
            return;
        }
        self.main_bytes -= bytes;
        self.held -= 1;
        residents.evict(hash, generation);
    }

    /// Ghosts remember as many keys as main holds values, at least 64.
    fn remember_ghost(&mut self, hash: u64) {
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

    /// Drops stale queue entries once they outnumber the live ones.
    fn compact_queues(&mut self, residents: &mut impl Residents) {
        let limit = 2 * self.held + 64;
        if self.small.len() + self.main.len() <= limit {
            return;
        }
        self.small.retain(|&(hash, generation)| residents.find(hash, generation).is_some());
        self.main.retain(|&(hash, generation)| residents.find(hash, generation).is_some());
    }
}

#[cfg(test)]
mod tests;
