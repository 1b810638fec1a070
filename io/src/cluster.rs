//! Several nodes together (docs/spec.md §8): global rate limits leased
//! from Redis, gateway writes through NATS JetStream (any live node
//! delivers them, statuses in a JetStream key-value bucket), purges sent
//! to every node. Without `--cluster-redis` and `--cluster-nats` nothing
//! here runs.
//!
//! The Redis and NATS clients need tokio: they run on one side thread
//! (`side`) with its own current-thread runtime. Cores talk to it through
//! [`Link`]: a bounded queue toward the thread (`try_send`: a core never
//! waits for room) and, back toward the cores, the mesh (lease answers
//! arrive as ordinary `Answer::Lease` replies, deliveries and purges as
//! ordinary messages) or a oneshot channel a core task awaits. No core
//! ever blocks on the network; a full queue or an unreachable service
//! turns into the documented fallback, never into a failed request:
//!
//! - Redis unreachable: leases are not asked of it; each node enforces
//!   its limits divided by `--cluster-size` on its own, and asks Redis
//!   again once a ping answers (one warning line each way).
//! - NATS unreachable: writes stay in the local log (durable there as
//!   `--durability` says) and are published when it returns; a status
//!   this node does not hold answers `queued`; purges reach this node only.

mod side;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use shardgate_shards::cluster::Purge;
use shardgate_shards::ratelimit::Unused;
use tokio::sync::{mpsc, oneshot};

use crate::config::ClusterConfig;
use crate::core::{CoreMesh, LeaseTicket};
use crate::runtime::metrics::Metrics;

/// Requests cores may have queued for the side thread; past it a request
/// takes its fallback (`shardgate_cluster_queue_full_total`).
pub const REQUEST_QUEUE_ENTRIES: usize = 8192;

/// What a core asks of the side thread.
pub enum Request {
    /// Lease permits from Redis; answered through the mesh to `source`
    /// with `token`, as the owner shard would.
    Lease { source: u32, token: u32, ticket: LeaseTicket, want: u32, now_ms: u64 },
    /// Return permits a Redis lease did not use.
    GiveBack { unused: Unused, now_ms: u64 },
    /// Publish a queued write (`payload`: its receipt and request) to the
    /// write stream; answered true once the stream has stored it.
    Publish { id: String, key_hash: u64, payload: Bytes, reply: oneshot::Sender<bool> },
    /// A write's status from the status bucket (receipt and status bytes).
    Status { id: String, reply: oneshot::Sender<Option<Bytes>> },
    /// Tell every other node.
    Notice(Purge),
}

/// A core's handle on the cluster (shared by every core of the process).
pub struct Link {
    requests: mpsc::Sender<Request>,
    redis_up: AtomicBool,
    nats_up: AtomicBool,
    config: ClusterConfig,
    metrics: Arc<Metrics>,
}

impl Link {
    /// Starts the side thread; the services are reached in the background.
    pub fn start(
        config: ClusterConfig,
        mesh: Arc<CoreMesh>,
        metrics: Arc<Metrics>,
        write_retries: u32,
    ) -> std::io::Result<Arc<Link>> {
        let (requests, inbox) = mpsc::channel(REQUEST_QUEUE_ENTRIES);
        let link = Arc::new(Link {
            requests,
            redis_up: AtomicBool::new(false),
            nats_up: AtomicBool::new(false),
            config,
            metrics,
        });
        side::spawn(Arc::clone(&link), mesh, inbox, write_retries)?;
        Ok(link)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether leases come from Redis now (else each node limits alone).
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Acquire)
    }

    /// Whether writes go to the stream now (else they wait in the local log).
    pub fn nats_up(&self) -> bool {
        self.nats_up.load(Ordering::Acquire)
    }

    pub fn has_nats(&self) -> bool {
        self.config.nats.is_some()
    }

    fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Ordering::Release);
        self.metrics.cluster().set_up(0, up);
    }

    fn set_nats_up(&self, up: bool) {
        self.nats_up.store(up, Ordering::Release);
        self.metrics.cluster().set_up(1, up);
    }

    fn send(&self, request: Request) -> bool {
        let sent = self.requests.try_send(request).is_ok();
        if !sent {
            self.metrics.cluster().queue_full();
        }
        sent
    }

    /// Asks Redis for a lease; false when it cannot be asked now.
    pub fn lease(&self, source: u32, token: u32, ticket: LeaseTicket, want: u32, now_ms: u64) -> bool {
        self.redis_up() && self.send(Request::Lease { source, token, ticket, want, now_ms })
    }

    /// Returns unused permits to Redis (best effort: a lost give-back only
    /// makes the limit stricter for a moment).
    pub fn give_back(&self, unused: Unused, now_ms: u64) {
        if self.redis_up() {
            self.send(Request::GiveBack { unused, now_ms });
        }
    }

    /// Publishes a write; None when NATS is unreachable or the queue full.
    pub fn publish(&self, id: String, key_hash: u64, payload: Bytes) -> Option<oneshot::Receiver<bool>> {
        if !self.nats_up() {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::Publish { id, key_hash, payload, reply }).then_some(answer)
    }

    /// Looks a write's status up in the status bucket.
    pub fn status(&self, id: String) -> Option<oneshot::Receiver<Option<Bytes>>> {
        if !self.nats_up() {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::Status { id, reply }).then_some(answer)
    }

    /// Sends a purge to every other node (at most once: a node that is
    /// down or cut off from NATS meanwhile misses it).
    pub fn notice(&self, purge: Purge) {
        if self.has_nats() && self.nats_up() {
            self.send(Request::Notice(purge));
        }
    }
}
