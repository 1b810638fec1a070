//! Hit ratio of the value cache's eviction policy against LRU and CLOCK on
//! a Zipf 0.99 trace (`shardgate-bench eviction`).
//!
//! S3-FIFO is shardgate's own code (`shards::evict::S3Fifo`); LRU and CLOCK
//! are reference implementations here. Every key has the same size, so a
//! cache of 1% holds 1% of the keys. A miss inserts the key (read-through),
//! as a GET of an evicted value reads it back from its segment.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use shardgate_shards::evict::{Residents, S3Fifo, Slot};

/// A cache policy under test: `access` returns whether it was a hit.
trait Policy {
    fn access(&mut self, key: u64) -> bool;
}

/// Exact LRU with lazy deletion: a hit appends a fresh slot and bumps the
/// key's generation; eviction skips slots whose generation is stale.
struct Lru {
    capacity: usize,
    generation: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    tick: u64,
}

impl Policy for Lru {
    fn access(&mut self, key: u64) -> bool {
        self.tick += 1;
        let hit = self.generation.insert(key, self.tick).is_some();
        self.order.push_back((key, self.tick));
        while self.generation.len() > self.capacity {
            let (old, tick) = self.order.pop_front().expect("a slot per key");
            if self.generation.get(&old) == Some(&tick) {
                self.generation.remove(&old);
            }
        }
        if self.order.len() > 4 * self.capacity + 64 {
            let generation = &self.generation;
            self.order.retain(|(k, t)| generation.get(k) == Some(t));
        }
        hit
    }
}

/// CLOCK (second chance).
struct Clock {
    capacity: usize,
    slots: Vec<(u64, bool)>,
    index: HashMap<u64, usize>,
    hand: usize,
}

impl Policy for Clock {
    fn access(&mut self, key: u64) -> bool {
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot].1 = true;
            return true;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push((key, false));
            return false;
        }
        loop {
            let (old, referenced) = self.slots[self.hand];
            if referenced {
                self.slots[self.hand].1 = false;
                self.hand = (self.hand + 1) % self.capacity;
                continue;
            }
            self.index.remove(&old);
            self.index.insert(key, self.hand);
            self.slots[self.hand] = (key, false);
            self.hand = (self.hand + 1) % self.capacity;
            return false;
        }
    }
}

/// S3-FIFO with its slots kept beside it, as the keydir keeps them.
struct S3 {
    cache: S3Fifo,
    slots: Slots,
}

struct Slots(HashMap<u64, Slot>);

impl Residents for Slots {
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)> {
        let slot = self.0.get_mut(&hash)?;
        (slot.is_held() && slot.generation == generation).then_some((slot, 1, true))
    }

    fn evict(&mut self, hash: u64, _generation: u32) {
        self.0.remove(&hash);
    }
}

impl Policy for S3 {
    fn access(&mut self, key: u64) -> bool {
        if let Some(slot) = self.slots.0.get_mut(&key) {
            slot.touch();
            return true;
        }
        // Equal sizes: the key itself serves as its hash.
        let slot = self.cache.admit(key, 1);
        self.slots.0.insert(key, slot);
        self.cache.make_room(&mut self.slots);
        false
    }
}

fn hit_ratio(policy: &mut dyn Policy, trace: &[u64]) -> f64 {
    // The first tenth warms the cache and is not counted.
    let warm = trace.len() / 10;
    let mut hits = 0;
    for (i, &key) in trace.iter().enumerate() {
        let hit = policy.access(key);
        if i >= warm && hit {
            hits += 1;
        }
    }
    hits as f64 / (trace.len() - warm) as f64
}

/// A Zipf trace over `keys` keys; with `scan_every`, a run of never-again
/// keys as long as the key space every that many requests.
pub fn trace(keys: u64, requests: usize, exponent: f64, scan_every: Option<usize>, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(keys as f64, exponent).expect("valid Zipf");
    let mut out = Vec::with_capacity(requests);
    let mut scanned = keys;
    while out.len() < requests {
        if scan_every.is_some_and(|every| out.len() % every == every - 1) {
            for _ in 0..keys / 10 {
                scanned += 1;
                out.push(scanned);
            }
        }
        out.push(zipf.sample(&mut rng) as u64);
    }
    out.truncate(requests);
    out
}

/// The Markdown report: hit ratios at 1%, 10% and 50% of the keys.
pub fn report(keys: u64, requests: usize, seed: u64) -> String {
    let mut out = String::new();
    let traces = [
        ("Zipf 0.99", trace(keys, requests, 0.99, None, seed)),
        ("Zipf 0.99 + scans", trace(keys, requests, 0.99, Some(requests / 20), seed)),
    ];
    let _ =
        writeln!(out, "{keys} keys, {requests} requests per trace (first 10% warm-up), seed {seed}; equal sizes.\n");
    let _ = writeln!(out, "| trace | cache (of keys) | LRU | CLOCK | S3-FIFO (shardgate) | S3-FIFO − LRU |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (name, trace) in &traces {
        for percent in [1u64, 10, 50] {
            let capacity = (keys * percent / 100).max(1) as usize;
            let lru =
                hit_ratio(&mut Lru { capacity, generation: HashMap::new(), order: VecDeque::new(), tick: 0 }, trace);
            let clock = hit_ratio(&mut Clock { capacity, slots: Vec::new(), index: HashMap::new(), hand: 0 }, trace);
            let s3 = hit_ratio(&mut S3 { cache: S3Fifo::new(capacity as u64), slots: Slots(HashMap::new()) }, trace);
            let _ = writeln!(
                out,
                "| {name} | {percent}% | {:.2}% | {:.2}% | {:.2}% | {:+.2} points |",
                lru * 100.0,
                clock * 100.0,
                s3 * 100.0,
                (s3 - lru) * 100.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_hit_on_a_skewed_trace_and_lru_is_exact() {
        let mut lru = Lru { capacity: 2, generation: HashMap::new(), order: VecDeque::new(), tick: 0 };
        assert!(!lru.access(1) && !lru.access(2) && lru.access(1));
        assert!(!lru.access(3), "evicts 2, the least recent");
        assert!(lru.access(1) && !lru.access(2));
        let trace = trace(1000, 20_000, 0.99, None, 3);
        let s3 = hit_ratio(&mut S3 { cache: S3Fifo::new(100), slots: Slots(HashMap::new()) }, &trace);
        assert!(s3 > 0.3, "{s3}");
    }
}
