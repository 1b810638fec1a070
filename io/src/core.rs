//! One core's state: its shard, its in-flight forwards, its connections.
//!
//! A [`Core`] lives behind an `Rc` on its own thread; every task on that
//! thread (acceptor, connections, mailbox, ticker) shares it. Nothing in it
//! is reachable from another thread except through the [`Mesh`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shardgate_shards::compaction::Location;
use shardgate_shards::conditions::Conditions;
use shardgate_shards::kv::{KvShard, Op, Outcome};
use shardgate_shards::ratelimit::{Class, Leases, Limiter, Policy, Unused};
use shardgate_shards::record::{self, Record, RecordOp};
use shardgate_shards::route::shard_for_hash;
use slab::Slab;

use crate::config::ServerConfig;
use crate::durable::CoreLog;
use crate::gateway::{self, Gateway};
use crate::http::response::{DateCache, Response};
use crate::mesh::{Answer, Forward, Mesh, Message, Reply, FORWARD_QUEUE_ENTRIES, REPLY_QUEUE_ENTRIES};
use crate::metrics::{Metrics, ShardMetrics};
use crate::reader::{read_cold, Reader};

/// Where a connection is in its request cycle; decides its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: closes silently at the idle timeout.
    Idle,
    /// Part of a head has arrived: 408 at the header timeout.
    Head,
    /// Waiting for body bytes: 408 when they stop coming.
    Body,
    /// Processing or writing: no deadline.
    Busy,
}

/// The registry entry of one open connection.
pub struct ConnTrack {
    pub fd: RawFd,
    pub phase: Phase,
    pub deadline_ms: u64,
    /// When the current head began arriving (0: not in a head).
    pub head_started_ms: u64,
    /// Set by the ticker when it cut the connection's read at its deadline.
    pub timed_out: bool,
}

/// A forwarded request awaiting its reply.
struct PendingReply {
    answer: Option<Answer>,
    /// For a lease request: whose lease, recorded by the core on arrival.
    lease: Option<(u64, Class, Policy)>,
    waker: Option<Waker>,
    /// The waiting connection went away; drop the reply when it comes.
    abandoned: bool,
}

pub struct Core {
    pub id: u32,
    /// This shard's log: appends, group commit, durability waits.
    pub log: Rc<RefCell<CoreLog>>,
    pub config: Arc<ServerConfig>,
    pub mesh: Arc<Mesh>,
    pub metrics_all: Arc<Metrics>,
    pub shard: RefCell<KvShard>,
    /// Reads evicted values back from this shard's segments.
    pub reader: Reader,
    /// Rate-limit windows of the client identities this shard owns.
    pub limiter: RefCell<Limiter>,
    /// Permits leased from other shards for identities they own.
    pub leases: RefCell<Leases>,
    /// Connections waiting for a lease answer; woken when any arrives.
    pub lease_waiters: RefCell<Vec<Waker>>,
    /// Reused buffer for dead record locations.
    dead_scratch: RefCell<Vec<Location>>,
    pending: RefCell<Slab<PendingReply>>,
    pub conns: RefCell<Slab<ConnTrack>>,
    pub date: RefCell<DateCache>,
    /// Wall-clock milliseconds at the last tick; deadlines are measured on it.
    pub now_ms: Cell<u64>,
    pub shutting_down: Cell<bool>,
    pub listener_fd: Cell<Option<RawFd>>,
    /// Gateway mode's cache, origins and write queue (None otherwise).
    pub gateway: Option<Gateway>,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Core {
    pub fn new(
        id: u32,
        config: Arc<ServerConfig>,
        mesh: Arc<Mesh>,
        metrics_all: Arc<Metrics>,
        shard: KvShard,
        log: CoreLog,
        reader: Reader,
    ) -> Core {
        let now = SystemTime::now();
        let core = Core {
            id,
            log: Rc::new(RefCell::new(log)),
            mesh,
            metrics_all,
            shard: RefCell::new(shard),
            reader,
            limiter: RefCell::new(Limiter::new(
                config.rate_limits.slots_per_shard(config.shard_count),
                config.rate_limits.window_ms_max(),
            )),
            leases: RefCell::new(Leases::new(config.rate_limits.leases_per_core(config.shard_count))),
            lease_waiters: RefCell::new(Vec::new()),
            dead_scratch: RefCell::new(Vec::new()),
            pending: RefCell::new(Slab::with_capacity(REPLY_QUEUE_ENTRIES)),
            conns: RefCell::new(Slab::with_capacity(1024.min(config.connections_max))),
            date: RefCell::new(DateCache::new(now)),
            now_ms: Cell::new(unix_ms(now)),
            shutting_down: Cell::new(false),
            listener_fd: Cell::new(None),
            gateway: config.gateway.as_ref().map(|g| Gateway::new(g, config.http_cache_bytes_per_shard())),
            config,
        };
        {
            let shard = core.shard.borrow();
            core.metrics().store(shard.bytes_held(), shard.bytes_max(), shard.keys(), shard.evictions());
        }
        core
    }

    pub fn metrics(&self) -> &ShardMetrics {
        self.metrics_all.shard(self.id)
    }

    pub fn shard_count(&self) -> u32 {
        self.config.shard_count
    }

    /// Applies an op to this core's own shard and logs a successful write.
    /// Returns the outcome and, for a logged write, the log offset past its
    /// record (durable once the log's durable end reaches it).
    pub fn apply(&self, now_ms: u64, op: Op) -> (Outcome, Option<u64>) {
        let logged = match &op {
            Op::Put { key, value, content_type, .. } => {
                Some((RecordOp::Put, key.clone(), value.clone(), content_type.clone()))
            }
            Op::Delete { key, .. } => Some((RecordOp::Delete, key.clone(), Bytes::new(), Bytes::new())),
            Op::Get { .. } => None,
        };
        // Where the write's record will sit, if the write happens.
        let location = match &logged {
            Some((_, key, value, content_type)) => Location {
                offset: self.log.borrow().next_offset(),
                bytes: (record::HEADER_BYTES + key.len() + value.len() + content_type.len()) as u32,
            },
            None => Location::NONE,
        };
        let is_read = logged.is_none();
        let durable_end = self.log.borrow().durable_end();
        let mut shard = self.shard.borrow_mut();
        shard.set_durable_end(durable_end);
        let outcome = shard.handle_at(now_ms, op, location);
        if is_read {
            self.metrics().lookup(!matches!(outcome, Outcome::NotFound));
        }
        self.metrics().store(shard.bytes_held(), shard.bytes_max(), shard.keys(), shard.evictions());
        drop(shard);
        let expires_at_ms = match (&outcome, &logged) {
            (Outcome::Stored { expires_at_ms, .. }, Some((RecordOp::Put, ..))) => *expires_at_ms,
            (Outcome::Deleted, Some((RecordOp::Delete, ..))) => None,
            _ => {
                self.settle_dead();
                return (outcome, None);
            }
        };
        let (op, key, value, content_type) = logged.expect("a logged outcome comes from a write");
        let record = Record {
            op,
            sequence: 0,
            timestamp_ms: now_ms,
            expires_at_ms,
            key: &key,
            content_type: &content_type,
            value: &value,
        };
        let mut log = self.log.borrow_mut();
        let appended = log.append(record, op == RecordOp::Put, Instant::now());
        assert_eq!(appended, location, "the record sits where the shard was told");
        drop(log);
        self.settle_dead();
        (outcome, Some(location.end()))
    }

    /// Tells the log's segment book about records the shard stopped needing.
    pub fn settle_dead(&self) {
        let mut dead = self.dead_scratch.borrow_mut();
        self.shard.borrow_mut().drain_dead(&mut dead);
        if dead.is_empty() {
            return;
        }
        let mut log = self.log.borrow_mut();
        for location in dead.drain(..) {
            log.book.dead(location);
        }
    }

    /// The response refusing a write now (full log backlog, failing disk).
    pub fn write_refusal(&self) -> Option<Response> {
        let refusal = self.log.borrow().refusal();
        if refusal.as_ref().is_some_and(|r| r.status == 503) {
            self.metrics().shed();
        }
        refusal
    }

    /// Reads a key from this core's own shard.
    pub fn read(&self, now_ms: u64, key: &[u8], conditions: &Conditions) -> Outcome {
        let outcome = self.shard.borrow_mut().get(now_ms, key, conditions);
        self.metrics().lookup(!matches!(outcome, Outcome::NotFound));
        if matches!(outcome, Outcome::NotFound) {
            self.settle_dead(); // The key may have just expired.
        }
        outcome
    }

    /// Sends `op` to its owner. Returns the future of its outcome, or the 503
    /// to answer when this core has too many requests in flight or the
    /// owner's queue is full.
    pub fn forward(self: &Rc<Self>, owner: u32, op: Op, sync: bool) -> Result<ReplyFuture, Response> {
        self.send(owner, Message::Kv { op, sync })
    }

    /// Sends a gateway request to the owner of its cache key.
    pub fn forward_gateway(
        self: &Rc<Self>,
        owner: u32,
        request: gateway::ProxyRequest,
    ) -> Result<ReplyFuture, Response> {
        self.send(owner, Message::Gateway(Box::new(request)))
    }

    /// Asks `owner` for up to `want` permits of `identity`'s window. The
    /// answer is recorded in this core's leases when it arrives, whoever
    /// still waits for it; waiters are woken through `lease_waiters`.
    pub fn ask_lease(
        &self,
        owner: u32,
        identity: u64,
        class: Class,
        policy: Policy,
        want: u32,
    ) -> Result<(), Response> {
        let token = self.reserve(Some((identity, class, policy)))?;
        let message = Message::Lease { identity, class, policy, want };
        self.post(owner, token, message)
    }

    /// Returns unused leased permits to their owner. Best effort: when the
    /// owner's queue is full they are dropped, which can only make the
    /// limit stricter for a moment, never looser.
    pub fn give_back(&self, unused: Unused) {
        let owner = shard_for_hash(unused.identity, self.shard_count());
        if owner == self.id {
            self.limiter.borrow_mut().give_back(self.now_ms.get(), unused);
            return;
        }
        // Give-backs never take the second half of an owner's queue: a burst
        // of expiring leases must not shed requests.
        if self.mesh.forward_depth(owner) < FORWARD_QUEUE_ENTRIES / 2 {
            let message = Message::GiveBack(unused);
            let _ = self.mesh.forward(owner, Forward { source: self.id, token: u32::MAX, message });
        }
    }

    fn send(self: &Rc<Self>, owner: u32, message: Message) -> Result<ReplyFuture, Response> {
        let token = self.reserve(None)?;
        self.post(owner, token, message)?;
        Ok(ReplyFuture { core: Rc::clone(self), token, done: false })
    }

    /// Takes a reply slot, or the 503 when this core has too many in flight.
    fn reserve(&self, lease: Option<(u64, Class, Policy)>) -> Result<usize, Response> {
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

    /// Serves everything in this core's mailbox: forwarded requests are
    /// applied and answered, replies are handed to their connections.
    /// Returns how many messages were handled.
    pub fn drain_mailbox(self: &Rc<Self>, batch_max: usize) -> usize {
        let now_ms = unix_ms(SystemTime::now());
        let mut handled = 0;
        while handled < batch_max {
            let Some(forward) = self.mesh.pop_forward(self.id) else {
                break;
            };
            handled += 1;
            let (source, token) = (forward.source, forward.token);
            let (op, sync) = match forward.message {
                Message::Kv { op, sync } => (op, sync),
                Message::Lease { identity, class, policy, want } => {
                    let decision = self.limiter.borrow_mut().acquire(now_ms, identity, class, policy, want);
                    self.metrics().lease(decision.granted > 0);
                    self.mesh.reply(source, Reply { token, answer: Answer::Lease(decision) });
                    continue;
                }
                Message::GiveBack(unused) => {
                    self.limiter.borrow_mut().give_back(now_ms, unused);
                    continue;
                }
                Message::Gateway(request) => {
                    if let Some(hit) = gateway::try_hit(self, &request) {
                        self.mesh.reply(source, Reply { token, answer: Answer::Gateway(hit) });
                        continue;
                    }
                    let core = Rc::clone(self);
                    monoio::spawn(async move {
                        let response = gateway::handle(Rc::clone(&core), *request).await;
                        core.mesh.reply(source, Reply { token, answer: Answer::Gateway(response) });
                    });
                    continue;
                }
            };
            let is_write = !matches!(op, Op::Get { .. });
            if let Some(refusal) = self.write_refusal().filter(|_| is_write) {
                self.mesh.reply(source, Reply { token, answer: Answer::Kv(Err(refusal)) });
                continue;
            }
            let key = op.key().clone();
            let (outcome, logged_end) = self.apply(now_ms, op);
            if let Outcome::Cold { location, content_type, etag } = outcome {
                // Read from disk on this core, then answer.
                let core = Rc::clone(self);
                monoio::spawn(async move {
                    let answer = read_cold(Rc::clone(&core), key, location, content_type, etag).await;
                    core.mesh.reply(source, Reply { token, answer: Answer::Kv(answer) });
                });
                continue;
            }
            match logged_end.filter(|_| sync) {
                Some(end) => self.log.borrow_mut().defer_reply(end, source, token, outcome),
                // Waking per reply still costs one cross-thread wake per batch:
                // after the first, the source's waker is taken until it re-polls.
                None => self.mesh.reply(source, Reply { token, answer: Answer::Kv(Ok(outcome)) }),
            }
        }
        self.metrics().hops_in(handled as u64);
        let mut pending = self.pending.borrow_mut();
        let mut leases_answered = false;
        while let Some(reply) = self.mesh.pop_reply(self.id) {
            let token = reply.token as usize;
            let slot = pending.get_mut(token).expect("reply for a token in flight");
            if let (Some((identity, class, policy)), Answer::Lease(decision)) = (slot.lease, &reply.answer) {
                pending.remove(token);
                crate::limit::record_grant(self, identity, class, policy, *decision, now_ms);
                leases_answered = true;
            } else if slot.abandoned {
                pending.remove(token);
            } else {
                slot.answer = Some(reply.answer);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            handled += 1;
        }
        drop(pending);
        if leases_answered {
            for waker in self.lease_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        handled
    }

    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

/// Resolves to the owner's answer to a forwarded request.
pub struct ReplyFuture {
    core: Rc<Core>,
    token: usize,
    done: bool,
}

impl Future for ReplyFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = self.core.pending.borrow_mut();
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
        let mut pending = self.core.pending.borrow_mut();
        let slot = pending.get_mut(self.token).expect("token in flight");
        if slot.answer.is_some() {
            pending.remove(self.token);
        } else {
            slot.abandoned = true;
            slot.waker = None;
        }
    }
}

#[cfg(test)]
mod tests;
