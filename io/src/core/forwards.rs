//! Requests this core sends to the owners of other keys and identities,
//! and the replies it waits for.
//!
//! A forwarded request takes a slot in [`Forwards`]: at most
//! [`REPLY_QUEUE_ENTRIES`] per core, so the reply queue can never
//! overflow, and a full owner queue answers 503 at once. A connection
//! awaits its reply through a [`ReplyFuture`]; a connection that went away
//! abandons its slot, which the reply then frees.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use shardgate_http::proxy::ProxyRequest;
use shardgate_http::response::Response;
use shardgate_shards::kv::{Op, Outcome};
use shardgate_shards::ratelimit::{Class, Decision, Policy, Unused};
use slab::Slab;
use tokio::sync::oneshot;

use crate::runtime::mesh::{Mesh, REPLY_QUEUE_ENTRIES};
use crate::runtime::metrics::{Metrics, ShardMetrics};

/// A request for the owner shard.
pub struct Forward {
    pub source: u32,
    /// Names the reply; unused by messages that get none.
    pub token: u32,
    pub message: Message,
}

/// What one core asks of the shard that owns a key or a client identity.
pub enum Message {
    /// A key-value op. With `sync`, reply only once its record is durable.
    Kv { op: Op, sync: bool },
    /// Up to `want` rate-limit permits for `identity`, charged at once.
    Lease { identity: u64, class: Class, policy: Policy, want: u32 },
    /// Permits a lease did not use. No reply.
    GiveBack(Unused),
    /// A gateway request for the owner of its cache key (boxed: it is large).
    Gateway(Box<ProxyRequest>),
    /// Drop what is stored under this cache key (an invalidation or a
    /// purge of a URL another core learnt of). No reply.
    Purge { hash: u64, key: Bytes },
    /// Purge every object carrying one of these surrogate keys; `soft`
    /// makes them stale instead. Answered with the count when `reply`
    /// (another core's purge; another node's gets none).
    PurgeTags { tags: Vec<Bytes>, soft: bool, reply: bool },
    /// Deliver a write the cluster's stream handed this node (docs/spec.md
    /// §8): `write` is its receipt and request as queued, `id` its
    /// `Idempotency-Key`. One try; the outcome goes back on `reply`.
    Deliver { write: Bytes, id: String, retry: bool, reply: oneshot::Sender<DeliveryOutcome> },
}

/// What one delivery of a write from the cluster's stream came to.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The origin answered with this status.
    Answered(u16),
    /// No answer: the reason (connect failure, timeout, open breaker).
    Failed(String),
    /// The origin's retry budget refused a redelivery: try later.
    Refused,
}

/// The owner's answer, addressed by the source core's token.
pub struct Reply {
    pub token: u32,
    pub answer: Answer,
}

#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The owner's outcome, or the response refusing the request (a full
    /// log backlog, a failing disk).
    Kv(Result<Outcome, Response>),
    /// The permits granted (possibly none) and the window's state.
    Lease(Decision),
    /// Redis did not answer a lease request (cluster mode): decide with
    /// the node's own limit instead.
    LeaseUnavailable,
    /// A gateway request's response.
    Gateway(Response),
    /// Objects a tag purge reached on the owner.
    Purged(u64),
}

/// The mesh the cores of this server share.
pub type CoreMesh = Mesh<Forward, Reply>;

/// Whose lease a lease request asks for, recorded when it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTicket {
    pub identity: u64,
    pub class: Class,
    pub policy: Policy,
}

/// A forwarded request awaiting its reply.
struct PendingReply {
    answer: Option<Answer>,
    lease: Option<LeaseTicket>,
    waker: Option<Waker>,
    /// The waiting connection went away; drop the reply when it comes.
    abandoned: bool,
}

/// This core's forwarded requests in flight.
pub struct Forwards {
    id: u32,
    mesh: Arc<CoreMesh>,
    metrics: Arc<Metrics>,
    pending: RefCell<Slab<PendingReply>>,
}

impl Forwards {
    pub fn new(id: u32, mesh: Arc<CoreMesh>, metrics: Arc<Metrics>) -> Rc<Forwards> {
        let pending = RefCell::new(Slab::with_capacity(REPLY_QUEUE_ENTRIES));
        Rc::new(Forwards { id, mesh, metrics, pending })
    }

    fn metrics(&self) -> &ShardMetrics {
        self.metrics.shard(self.id)
    }

    /// Sends `message` to `owner`. Returns the future of its answer, or the
    /// 503 to give when this core has too many requests in flight or the
    /// owner's queue is full.
    pub fn send(self: &Rc<Self>, owner: u32, message: Message) -> Result<ReplyFuture, Response> {
        let token = self.reserve(None)?;
        self.post(owner, token, message)?;
        Ok(ReplyFuture { forwards: Rc::clone(self), token, done: false })
    }

    /// Sends a lease request; its answer comes back through [`Forwards::deliver`].
    pub fn ask(&self, owner: u32, ticket: LeaseTicket, want: u32) -> Result<(), Response> {
        let token = self.reserve(Some(ticket))?;
        let LeaseTicket { identity, class, policy } = ticket;
        self.post(owner, token, Message::Lease { identity, class, policy, want })
    }

    /// A lease request that `send` hands to someone other than a shard
    /// (the cluster's Redis), who answers through this core's reply queue
    /// with the token it is given. False when it could not be sent.
    pub fn ask_elsewhere(&self, ticket: LeaseTicket, send: impl FnOnce(u32) -> bool) -> bool {
        let Ok(token) = self.reserve(Some(ticket)) else { return false };
        if !send(token as u32) {
            self.pending.borrow_mut().remove(token);
            return false;
        }
        true
    }

    /// Sends a message that gets no reply, while `owner`'s inbound queue
    /// holds fewer than `depth_max`. Returns whether it went.
    pub fn notify(&self, owner: u32, message: Message, depth_max: usize) -> bool {
        if self.mesh.forward_depth(owner) >= depth_max {
            return false;
        }
        self.mesh.forward(owner, Forward { source: self.id, token: u32::MAX, message }).is_ok()
    }

    /// Takes a reply slot, or the 503 when this core has too many in flight.
    fn reserve(&self, lease: Option<LeaseTicket>) -> Result<usize, Response> {
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= REPLY_QUEUE_ENTRIES {
            self.metrics().shed();
            return Err(Response::overloaded("too many requests in flight to other shards"));
        }
        Ok(pending.insert(PendingReply { answer: None, lease, waker: None, abandoned: false }))
    }

    fn post(&self, owner: u32, token: usize, message: Message) -> Result<(), Response> {
        assert_ne!(owner, self.id, "local work is done here, not forwarded");
        let forward = Forward { source: self.id, token: token as u32, message };
        if self.mesh.forward(owner, forward).is_err() {
            self.pending.borrow_mut().remove(token);
            self.metrics().shed();
            return Err(Response::overloaded("the owner shard's inbound queue is full"));
        }
        self.metrics().hop_out();
        Ok(())
    }

    /// Hands a reply to its waiting request. Returns the ticket and answer
    /// of a lease request, which its sender records (nobody awaits it).
    /// An unanswered lease request (Redis unreachable) comes back with no
    /// decision.
    pub fn deliver(&self, reply: Reply) -> Option<(LeaseTicket, Option<Decision>)> {
        let token = reply.token as usize;
        let mut pending = self.pending.borrow_mut();
        let slot = pending.get_mut(token).expect("reply for a token in flight");
        if let Some(ticket) = slot.lease {
            let decision = match reply.answer {
                Answer::Lease(decision) => Some(decision),
                _ => None,
            };
            pending.remove(token);
            return Some((ticket, decision));
        }
        if slot.abandoned {
            pending.remove(token);
            return None;
        }
        slot.answer = Some(reply.answer);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        None
    }

    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

/// Resolves to the owner's answer to a forwarded request.
pub struct ReplyFuture {
    forwards: Rc<Forwards>,
    token: usize,
    done: bool,
}

impl Future for ReplyFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = self.forwards.pending.borrow_mut();
        let slot = pending.get_mut(self.token).expect("token in flight");
        match slot.answer.take() {
            Some(answer) => {
                pending.remove(self.token);
                drop(pending);
                self.done = true;
                Poll::Ready(answer)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut pending = self.forwards.pending.borrow_mut();
        let slot = pending.get_mut(self.token).expect("token in flight");
        if slot.answer.is_some() {
            pending.remove(self.token);
        } else {
            slot.abandoned = true;
            slot.waker = None;
        }
    }
}
