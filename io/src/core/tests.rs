use std::net::SocketAddr;

use bytes::Bytes;
use shardgate_shards::route::shard_for_key;

use super::*;
use crate::driver::Driver;
use crate::http::codec::Limits;
use crate::limit::RateLimits;
use crate::log::{Durability, LogConfig};
use crate::mesh::{Answer, FORWARD_QUEUE_ENTRIES};
use shardgate_shards::ratelimit::{Class, Decision, LeaseCheck, Policy, Unused};
use std::time::Duration;

fn core(id: u32, mesh: &Arc<Mesh>) -> Rc<Core> {
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shard_count: 2,
        cpus: vec![0, 0],
        driver: Driver::Epoll,
        limits: Limits { head_bytes_max: 1024, body_bytes_max: 1024 },
        cache_bytes: 1 << 20,
        connections_max: 16,
        header_timeout_s: 10,
        idle_timeout_s: 60,
        body_timeout_s: 60,
        backlog: 16,
        log: LogConfig {
            data_dir: std::path::PathBuf::from("/nonexistent"),
            durability: Durability::Async,
            flush_interval: Duration::from_millis(5),
            segment_bytes: 1 << 20,
            backlog_bytes_max: 1 << 20,
            recovery_delay: Duration::ZERO,
            full_disk_switch: None,
        },
        rate_limits: RateLimits { state_bytes: 1 << 20, ..RateLimits::default() },
        gateway: None,
    };
    // A log nobody flushes: these tests only read.
    let (jobs, _unserviced) = std::sync::mpsc::sync_channel(1);
    let book = shardgate_shards::compaction::SegmentBook::new(1 << 20, 0);
    let log = CoreLog::new(Durability::Async, Duration::from_millis(5), 1 << 20, book, 0, jobs, Arc::default());
    let shard = KvShard::new(1 << 20);
    let reader = crate::reader::Reader::spawn(id).expect("reader thread");
    Rc::new(Core::new(id, Arc::new(config), Arc::clone(mesh), Arc::new(Metrics::new(2)), shard, log, reader))
}

fn get(key: &str) -> Op {
    Op::Get { key: Bytes::copy_from_slice(key.as_bytes()), conditions: Conditions::default() }
}

fn key_of(owner: u32) -> String {
    (0..).map(|i| format!("k{i}")).find(|k| shard_for_key(k.as_bytes(), 2) == owner).unwrap()
}

#[test]
fn a_full_inbound_queue_answers_503() {
    let mesh = Arc::new(Mesh::new(2));
    let sender = core(0, &mesh);
    let key = key_of(1);
    let mut replies = Vec::new();
    for _ in 0..FORWARD_QUEUE_ENTRIES {
        let reply = sender.forward(1, get(&key), false).unwrap_or_else(|r| panic!("refused with {}", r.status));
        replies.push(reply);
    }
    let refused = sender.forward(1, get(&key), false).err().expect("queue full");
    assert_eq!((refused.status, refused.retry_after_s), (503, Some(1)));
    assert_eq!(sender.metrics_all.shard(0).shed_count(), 1);
    assert_eq!(sender.in_flight(), FORWARD_QUEUE_ENTRIES, "the refused request holds no slot");
}

#[test]
fn in_flight_forwards_are_bounded_and_answered() {
    let mesh = Arc::new(Mesh::new(2));
    let sender = core(0, &mesh);
    let owner = core(1, &mesh);
    let key = key_of(1);
    let mut replies = Vec::new();
    // The owner drains its queue as it fills, but nobody collects replies:
    // the sender's in-flight bound is what stops it.
    loop {
        match sender.forward(1, get(&key), false) {
            Ok(reply) => replies.push(reply),
            Err(refused) => {
                assert_eq!((refused.status, refused.retry_after_s), (503, Some(1)));
                break;
            }
        }
        if mesh.forward_depth(1) == FORWARD_QUEUE_ENTRIES {
            owner.drain_mailbox(usize::MAX);
        }
    }
    owner.drain_mailbox(usize::MAX);
    assert_eq!(replies.len(), REPLY_QUEUE_ENTRIES);
    // Dropping a waiting future abandons its slot; the reply frees it.
    replies.truncate(10);
    assert_eq!(sender.drain_mailbox(usize::MAX), REPLY_QUEUE_ENTRIES);
    assert_eq!(sender.in_flight(), 10);
    // The remaining replies resolve with the owner's outcome.
    let waker = std::task::Waker::noop();
    let mut context = Context::from_waker(waker);
    for mut reply in replies {
        let outcome = Pin::new(&mut reply).poll(&mut context);
        assert_eq!(outcome, Poll::Ready(Answer::Kv(Ok(Outcome::NotFound))));
    }
    assert_eq!(sender.in_flight(), 0);
}

#[test]
fn leases_are_charged_by_the_owner_and_given_back() {
    let mesh = Arc::new(Mesh::new(2));
    let (owner, asker) = (core(0, &mesh), core(1, &mesh));
    // A day-long window: buckets of three hours, so the owner's clock and
    // the test's stay in one bucket.
    let policy = Policy::new(10, 86_400_000).expect("valid");
    let identity = (0..).find(|&i| shardgate_shards::route::shard_for_hash(i, 2) == 0).expect("some hash");
    let now_ms = asker.now_ms.get();
    // Asks for `want` permits as limit::check does; returns how many the
    // asking core can then spend, and what it says after.
    let ask = |want| {
        let mut unused = Vec::new();
        asker.leases.borrow_mut().ask(now_ms, identity, Class::All, policy, 64, &mut unused);
        asker.ask_lease(0, identity, Class::All, policy, want).expect("queued");
        assert!(asker.leases.borrow_mut().is_asking(identity, Class::All));
        owner.drain_mailbox(usize::MAX);
        asker.drain_mailbox(usize::MAX);
        let mut leases = asker.leases.borrow_mut();
        assert!(!leases.is_asking(identity, Class::All), "the answer was recorded on arrival");
        let mut spent = 0;
        loop {
            match leases.spend(now_ms, identity, Class::All) {
                LeaseCheck::Allowed { .. } => spent += 1,
                other => return (spent, other),
            }
        }
    };
    assert_eq!(ask(6), (6, LeaseCheck::Ask));
    assert_eq!(ask(6), (4, LeaseCheck::Ask));
    assert!(matches!(ask(1), (0, LeaseCheck::Refused { .. })));
    // Unused permits come back through the mailbox and free the window.
    asker.give_back(Unused { identity, class: Class::All, policy, permits: 3, charged_ms: owner.now_ms.get() });
    owner.drain_mailbox(usize::MAX);
    let after: Decision = owner.limiter.borrow_mut().acquire(now_ms, identity, Class::All, policy, 10);
    assert_eq!(after.granted, 3);
}
