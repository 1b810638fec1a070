use hashbrown::HashMap;

use super::*;

/// Read counters kept beside the cache, as the keydir keeps them.
#[derive(Default)]
struct Counts {
    freq: HashMap<u64, u8>,
    pinned: bool,
}

impl Residents<u64> for Counts {
    fn freq(&mut self, key: &u64) -> u8 {
        self.freq.get(key).copied().unwrap_or(0)
    }

    fn set_freq(&mut self, key: &u64, freq: u8) {
        self.freq.insert(*key, freq);
    }

    fn may_evict(&mut self, _key: &u64) -> bool {
        !self.pinned
    }
}

impl Counts {
    fn touch(&mut self, key: u64) {
        let freq = self.freq.entry(key).or_insert(0);
        *freq = (*freq + 1).min(FREQ_MAX);
    }
}

fn insert(cache: &mut S3Fifo<u64>, counts: &mut Counts, key: u64, bytes: u64) -> Vec<u64> {
    let mut evicted = Vec::new();
    counts.set_freq(&key, 0);
    cache.insert(key, bytes, &mut evicted, counts);
    evicted
}

#[test]
fn stays_within_capacity_and_reports_what_it_drops() {
    let (mut cache, mut counts) = (S3Fifo::new(1000), Counts::default());
    let mut dropped = 0;
    for key in 0..1000 {
        dropped += insert(&mut cache, &mut counts, key, 10).len();
        assert!(cache.bytes() <= 1000);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(dropped, 900);
}

#[test]
fn a_scan_does_not_flush_the_hot_set() {
    let (mut cache, mut counts) = (S3Fifo::new(100), Counts::default());
    // A hot set of 50 keys, each read a few times.
    for key in 0..50 {
        insert(&mut cache, &mut counts, key, 1);
    }
    for _ in 0..3 {
        for key in 0..50 {
            counts.touch(key);
        }
    }
    // Push them through the small queue into main.
    for key in 1000..1100 {
        insert(&mut cache, &mut counts, key, 1);
    }
    // A scan of 10,000 keys read once.
    for key in 10_000..20_000 {
        insert(&mut cache, &mut counts, key, 1);
        if key % 10 == 0 {
            for hot in 0..50 {
                counts.touch(hot);
            }
        }
    }
    let kept = (0..50).filter(|k| cache.contains(k)).count();
    assert_eq!(kept, 50, "the hot set survives the scan");
}

#[test]
fn a_ghost_comes_back_into_main() {
    let (mut cache, mut counts) = (S3Fifo::new(10), Counts::default());
    insert(&mut cache, &mut counts, 1, 1);
    let mut gone = Vec::new();
    for key in 100..120 {
        gone.extend(insert(&mut cache, &mut counts, key, 1));
    }
    assert!(gone.contains(&1) && !cache.contains(&1));
    insert(&mut cache, &mut counts, 1, 1);
    // Back from the ghost queue: it went to main, so ten new one-time keys
    // (which churn through the small queue) do not evict it.
    for key in 200..210 {
        insert(&mut cache, &mut counts, key, 1);
    }
    assert!(cache.contains(&1));
}

#[test]
fn refused_values_stay_and_removed_ones_free_their_bytes() {
    let (mut cache, mut counts) = (S3Fifo::new(10), Counts::default());
    for key in 0..10 {
        insert(&mut cache, &mut counts, key, 1);
    }
    // Nothing may go: the cache is over capacity for now, and says so.
    counts.pinned = true;
    let mut evicted = Vec::new();
    assert!(!cache.insert(10, 5, &mut evicted, &mut counts));
    assert!(evicted.is_empty() && cache.bytes() == 15);
    assert!(cache.remove(&3));
    assert!(!cache.remove(&3));
    assert_eq!(cache.bytes(), 14);
    // Once values may go, the next insert catches up.
    counts.pinned = false;
    assert!(cache.insert(11, 1, &mut evicted, &mut counts));
    assert!(cache.bytes() <= 10);
    assert!(!evicted.contains(&3), "a removed key is not reported again");
}

#[test]
fn stale_slots_do_not_pile_up() {
    let (mut cache, mut counts) = (S3Fifo::new(1 << 20), Counts::default());
    for round in 0..100u64 {
        for key in 0..100 {
            if round > 0 {
                cache.remove(&key);
            }
            insert(&mut cache, &mut counts, key, 1);
        }
    }
    assert!(cache.small.len() + cache.main.len() <= 2 * 100 + 64 + 1, "{}", cache.small.len());
}

#[test]
fn replacing_a_value_keeps_its_slot() {
    let (mut cache, mut counts) = (S3Fifo::new(1 << 20), Counts::default());
    for key in 0..100u64 {
        insert(&mut cache, &mut counts, key, 10);
    }
    let mut evicted = Vec::new();
    for round in 0..100u64 {
        for key in 0..100u64 {
            assert!(cache.replace(&key, 10 + round % 3, &mut evicted, &mut counts));
        }
    }
    assert_eq!(cache.small.len() + cache.main.len(), 100, "no stale slots from overwrites");
    assert_eq!(cache.bytes(), 100 * 10, "the last round wrote 10-byte values");
    assert!(!cache.replace(&1000, 5, &mut evicted, &mut counts), "a key not held is not replaced");
    // A value that grows past the capacity makes room like an insert.
    let (mut small, mut counts) = (S3Fifo::new(100), Counts::default());
    for key in 0..10u64 {
        insert(&mut small, &mut counts, key, 10);
    }
    assert!(small.replace(&0, 50, &mut evicted, &mut counts));
    assert!(small.bytes() <= 100);
}
