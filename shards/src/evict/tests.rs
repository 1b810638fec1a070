use hashbrown::HashMap;

use super::*;

/// Values kept beside the cache as the keydir keeps them: key (its own
/// hash here) → slot and size.
#[derive(Default)]
struct Owner {
    values: HashMap<u64, (Slot, u64)>,
    pinned: bool,
}

impl Residents for Owner {
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)> {
        let pinned = self.pinned;
        let (slot, bytes) = self.values.get_mut(&hash)?;
        (slot.is_held() && slot.generation == generation).then_some((slot, *bytes, !pinned))
    }

    fn evict(&mut self, hash: u64, _generation: u32) {
        self.values.remove(&hash);
    }
}

impl Owner {
    fn insert(&mut self, cache: &mut S3Fifo, key: u64, bytes: u64) {
        if let Some((slot, old)) = self.values.remove(&key) {
            cache.forget(&slot, old);
        }
        let slot = cache.admit(key, bytes);
        self.values.insert(key, (slot, bytes));
        cache.make_room(self);
    }

    fn touch(&mut self, key: u64) {
        if let Some((slot, _)) = self.values.get_mut(&key) {
            slot.touch();
        }
    }

    fn holds(&self, key: u64) -> bool {
        self.values.get(&key).is_some_and(|(slot, _)| slot.is_held())
    }
}

#[test]
fn stays_within_capacity() {
    let (mut cache, mut owner) = (S3Fifo::new(1000), Owner::default());
    for key in 0..1000 {
        owner.insert(&mut cache, key, 10);
        assert!(cache.bytes() <= 1000);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(owner.values.len(), 100, "900 values were evicted");
}

#[test]
fn a_scan_does_not_flush_the_hot_set() {
    let (mut cache, mut owner) = (S3Fifo::new(100), Owner::default());
    for key in 0..50 {
        owner.insert(&mut cache, key, 1);
    }
    for _ in 0..3 {
        for key in 0..50 {
            owner.touch(key);
        }
    }
    for key in 1000..1100 {
        owner.insert(&mut cache, key, 1);
    }
    for key in 10_000..20_000 {
        owner.insert(&mut cache, key, 1);
        if key % 10 == 0 {
            for hot in 0..50 {
                owner.touch(hot);
            }
        }
    }
    let kept = (0..50).filter(|&k| owner.holds(k)).count();
    assert_eq!(kept, 50, "the hot set survives the scan");
}

#[test]
fn a_ghost_comes_back_into_main() {
    let (mut cache, mut owner) = (S3Fifo::new(10), Owner::default());
    owner.insert(&mut cache, 1, 1);
    for key in 100..120 {
        owner.insert(&mut cache, key, 1);
    }
    assert!(!owner.holds(1));
    owner.insert(&mut cache, 1, 1);
    assert_eq!(owner.values[&1].0.queue, Queue::Main, "back from the ghosts, into main");
    for key in 200..210 {
        owner.insert(&mut cache, key, 1);
    }
    assert!(owner.holds(1));
}

#[test]
fn refused_values_stay_and_forgotten_ones_free_their_bytes() {
    let (mut cache, mut owner) = (S3Fifo::new(10), Owner::default());
    for key in 0..10 {
        owner.insert(&mut cache, key, 1);
    }
    owner.pinned = true;
    let slot = cache.admit(10, 5);
    owner.values.insert(10, (slot, 5));
    assert!(!cache.make_room(&mut owner), "over capacity for now, and says so");
    assert_eq!(cache.bytes(), 15);
    assert_eq!(owner.values.len(), 11);
    let (slot, bytes) = owner.values.remove(&3).unwrap();
    cache.forget(&slot, bytes);
    assert_eq!(cache.bytes(), 14);
    owner.pinned = false;
    assert!(cache.make_room(&mut owner));
    assert!(cache.bytes() <= 10);
}

#[test]
fn stale_entries_do_not_pile_up() {
    let (mut cache, mut owner) = (S3Fifo::new(1 << 20), Owner::default());
    for _round in 0..100u64 {
        for key in 0..100 {
            owner.insert(&mut cache, key, 1);
        }
    }
    assert!(cache.small.len() + cache.main.len() <= 2 * 100 + 64 + 1, "{}", cache.small.len());
    assert_eq!(cache.len(), 100);
}

#[test]
fn resizing_keeps_the_place() {
    let (mut cache, mut owner) = (S3Fifo::new(1 << 20), Owner::default());
    for key in 0..100u64 {
        owner.insert(&mut cache, key, 10);
    }
    for round in 0..100u64 {
        for key in 0..100u64 {
            let (slot, bytes) = owner.values.get_mut(&key).unwrap();
            cache.resize(slot, *bytes, 10 + round % 3);
            *bytes = 10 + round % 3;
        }
    }
    assert_eq!(cache.small.len() + cache.main.len(), 100, "no stale entries from in-place replacement");
    assert_eq!(cache.bytes(), 100 * 10, "the last round wrote 10-byte values");
}
