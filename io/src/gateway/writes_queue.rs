//! One shard's queue of asynchronous writes awaiting delivery: which keys
//! have writes, in which order, and which a deliverer works on.

use std::collections::VecDeque;
use std::task::Waker;

use hashbrown::{HashMap, HashSet};

/// One shard's queue of writes awaiting delivery.
#[derive(Default)]
pub struct Queue {
    /// Next sequence number to assign.
    pub(super) sequence: u64,
    /// Queued sequences per cache-key hash, oldest first.
    pub(super) by_key: HashMap<u64, VecDeque<u64>>,
    /// Keys with queued writes and no deliverer on them.
    pub(super) ready: VecDeque<u64>,
    /// Keys a deliverer is working on.
    pub(super) busy: HashSet<u64>,
    pub(super) queued: usize,
    pub(super) deliverers: usize,
    /// Finished writes' statuses, oldest first: (key hash, sequence, bytes).
    pub(super) statuses: VecDeque<(u64, u64, u64)>,
    pub(super) status_bytes: u64,
    idle: Vec<Waker>,
}

impl Queue {
    pub(super) fn push(&mut self, key_hash: u64, sequence: u64) {
        let ids = self.by_key.entry(key_hash).or_default();
        ids.push_back(sequence);
        if ids.len() == 1 && !self.busy.contains(&key_hash) {
            self.ready.push_back(key_hash);
        }
        self.queued += 1;
        for waker in self.idle.drain(..) {
            waker.wake();
        }
    }
}
