//! The forwarding protocol between cores, driven by hand: a mesh, the
//! metrics and `Forwards` on each side; no server, log or thread.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use shardgate_shards::conditions::Conditions;
use shardgate_shards::kv::{Op, Outcome};
use shardgate_shards::ratelimit::{Class, LeaseCheck, Leases, Limiter, Policy, Unused};
use shardgate_shards::route::shard_for_hash;

use super::forwards::{Answer, CoreMesh, Forward, Forwards, LeaseTicket, Message, Reply};
use crate::runtime::mesh::{FORWARD_QUEUE_ENTRIES, REPLY_QUEUE_ENTRIES};
use crate::runtime::metrics::Metrics;

fn side(id: u32, mesh: &Arc<CoreMesh>, metrics: &Arc<Metrics>) -> Rc<Forwards> {
    Forwards::new(id, Arc::clone(mesh), Arc::clone(metrics))
}

fn get() -> Message {
    Message::Kv { op: Op::Get { key: Bytes::from_static(b"k"), conditions: Conditions::default() }, sync: false }
}

/// The owner's side: answers every key-value op with NotFound and serves
/// lease requests and give-backs from `limiter`. Returns how many it served.
fn serve(mesh: &CoreMesh, owner: u32, limiter: &mut Limiter, now_ms: u64) -> usize {
    let mut served = 0;
    while let Some(Forward { source, token, message }) = mesh.pop_forward(owner) {
        served += 1;
        let answer = match message {
            Message::Kv { .. } => Answer::Kv(Ok(Outcome::NotFound)),
            Message::Lease { identity, class, policy, want } => {
                Answer::Lease(limiter.acquire(now_ms, identity, class, policy, want))
            }
            Message::GiveBack(unused) => {
                limiter.give_back(now_ms, unused);
                continue;
            }
            Message::Gateway(_) | Message::Purge { .. } | Message::PurgeTags { .. } | Message::Deliver { .. } => {
                unreachable!("no gateway here")
            }
        };
        mesh.reply(source, Reply { token, answer });
    }
    served
}

#[test]
fn a_full_inbound_queue_answers_503() {
    let (mesh, metrics) = (Arc::new(CoreMesh::new(2)), Arc::new(Metrics::new(2)));
    let sender = side(0, &mesh, &metrics);
    let mut replies = Vec::new();
    for _ in 0..FORWARD_QUEUE_ENTRIES {
        replies.push(sender.send(1, get()).unwrap_or_else(|r| panic!("refused with {}", r.status)));
    }
    let refused = sender.send(1, get()).err().expect("queue full");
    assert_eq!((refused.status, refused.retry_after_s), (503, Some(1)));
    assert_eq!(metrics.shard(0).shed_count(), 1);
    assert_eq!(sender.in_flight(), FORWARD_QUEUE_ENTRIES, "the refused request holds no slot");
}

#[test]
fn in_flight_forwards_are_bounded_and_answered() {
    let (mesh, metrics) = (Arc::new(CoreMesh::new(2)), Arc::new(Metrics::new(2)));
    let sender = side(0, &mesh, &metrics);
    let mut limiter = Limiter::new(16, 1000);
    let mut replies = Vec::new();
    // The owner drains its queue as it fills, but nobody collects replies:
    // the sender's in-flight bound is what stops it.
    loop {
        match sender.send(1, get()) {
            Ok(reply) => replies.push(reply),
            Err(refused) => {
                assert_eq!((refused.status, refused.retry_after_s), (503, Some(1)));
                break;
            }
        }
        if mesh.forward_depth(1) == FORWARD_QUEUE_ENTRIES {
            serve(&mesh, 1, &mut limiter, 0);
        }
    }
    serve(&mesh, 1, &mut limiter, 0);
    assert_eq!(replies.len(), REPLY_QUEUE_ENTRIES);
    // Dropping a waiting future abandons its slot; the reply frees it.
    replies.truncate(10);
    let mut delivered = 0;
    while let Some(reply) = mesh.pop_reply(0) {
        assert!(sender.deliver(reply).is_none(), "no lease was asked");
        delivered += 1;
    }
    assert_eq!((delivered, sender.in_flight()), (REPLY_QUEUE_ENTRIES, 10));
    // The remaining replies resolve with the owner's outcome.
    let mut context = Context::from_waker(std::task::Waker::noop());
    for mut reply in replies {
        let outcome = Pin::new(&mut reply).poll(&mut context);
        assert_eq!(outcome, Poll::Ready(Answer::Kv(Ok(Outcome::NotFound))));
    }
    assert_eq!(sender.in_flight(), 0);
}

#[test]
fn leases_are_charged_by_the_owner_and_given_back() {
    let (mesh, metrics) = (Arc::new(CoreMesh::new(2)), Arc::new(Metrics::new(2)));
    let asker = side(1, &mesh, &metrics);
    let (mut owner_limiter, mut leases) = (Limiter::new(16, 86_400_000), Leases::new(16));
    // A day-long window: buckets of three hours, so every step stays in one bucket.
    let policy = Policy::new(10, 86_400_000).expect("valid");
    let identity = (0..).find(|&i| shard_for_hash(i, 2) == 0).expect("some hash");
    let now_ms = 1_000_000;
    // Asks for `want` permits as the rate limiter does; returns how many
    // the asking core can then spend, and what it says after.
    let mut ask = |want| {
        let mut unused = Vec::new();
        leases.ask(now_ms, identity, Class::All, policy, 64, &mut unused);
        let ticket = LeaseTicket { identity, class: Class::All, policy };
        asker.ask(0, ticket, want).expect("queued");
        assert!(leases.is_asking(identity, Class::All));
        serve(&mesh, 0, &mut owner_limiter, now_ms);
        let reply = mesh.pop_reply(1).expect("the owner answered");
        let (answered, decision) = asker.deliver(reply).expect("a lease answer is handed back");
        assert_eq!(answered, ticket);
        leases.grant(now_ms, identity, Class::All, decision.expect("an owner always decides"), 1000);
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
    assert_eq!(asker.in_flight(), 0, "lease answers free their slots");
    // Unused permits come back through the mailbox and free the window.
    let unused = Unused { identity, class: Class::All, policy, permits: 3, charged_ms: now_ms };
    assert!(asker.notify(0, Message::GiveBack(unused), FORWARD_QUEUE_ENTRIES / 2));
    serve(&mesh, 0, &mut owner_limiter, now_ms);
    assert_eq!(owner_limiter.acquire(now_ms, identity, Class::All, policy, 10).granted, 3);
}
