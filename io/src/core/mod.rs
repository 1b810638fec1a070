//! One core's state, shared by every task on its thread through an `Rc`.
//!
//! [`Core`] groups what a core owns by concern, each behind its own type:
//! the key-value state and its log ([`Store`]), the requests it forwarded
//! to other shards ([`Forwards`]), its open connections ([`Conns`]), and
//! its clock (read once per loop turn, see [`Core::tick`]). Features (the
//! key-value API, rate limiting, the gateway) sit on top and keep their
//! own state; nothing here knows of them. Nothing in a core is reachable
//! from another thread except through the mesh.

pub mod conns;
pub mod forwards;

use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use shardgate_http::response::{DateCache, Response};

pub use conns::{Conns, Phase, Timeouts};
pub use forwards::{Answer, CoreMesh, DeliveryOutcome, Forward, Forwards, LeaseTicket, Message, Reply, ReplyFuture};

use crate::config::ServerConfig;
use crate::origin::Health;
use crate::runtime::access_log::AccessLog;
use crate::runtime::metrics::{DiskRefusal, Metrics, OriginGauges, ShardMetrics};
use crate::runtime::slots::Slots;
use crate::runtime::unix_ms;
use crate::runtime::watchdog::{Busy, Heartbeats};
use crate::storage::{Refusal, Store};

/// What every core of the process shares: the configuration, the mesh,
/// the metrics and the stall watchdog's heartbeats.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<ServerConfig>,
    pub mesh: Arc<CoreMesh>,
    pub metrics: Arc<Metrics>,
    pub heartbeats: Arc<Heartbeats>,
    /// Each `--origin`'s slots (gateway mode; empty otherwise).
    pub origin_slots: Arc<[Arc<Slots>]>,
    /// Each `--origin`'s health, as the process-wide prober finds it.
    pub origin_health: Arc<[Arc<Health>]>,
    /// The access log, when `--access-log` is on.
    pub access_log: Option<Arc<AccessLog>>,
}

pub struct Core {
    id: u32,
    shared: Shared,
    store: Rc<Store>,
    forwards: Rc<Forwards>,
    conns: Conns,
    /// Wall-clock milliseconds at the last loop turn or tick.
    now_ms: Cell<u64>,
    date: RefCell<DateCache>,
}

impl Core {
    /// A core whose shard is still recovering (its store takes no writes).
    pub fn new(id: u32, shared: Shared) -> Core {
        let config = &shared.config;
        let store =
            Store::recovering(id, Arc::clone(&shared.metrics), &config.log.data_dir, config.kv_bytes_per_shard());
        let forwards = Forwards::new(id, Arc::clone(&shared.mesh), Arc::clone(&shared.metrics));
        let timeouts = Timeouts {
            header: config.header_timeout,
            idle: config.idle_timeout,
            body: config.body_timeout,
            send: config.send_timeout,
        };
        let conns = Conns::new(config.connections_max, timeouts);
        let now = SystemTime::now();
        Core {
            id,
            store: Rc::new(store),
            forwards,
            conns,
            now_ms: Cell::new(unix_ms(now)),
            date: RefCell::new(DateCache::new(now)),
            shared,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn shard_count(&self) -> u32 {
        self.shared.config.shard_count
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.shared.config
    }

    /// Each origin's in-flight count, limit and health, for /metrics.
    pub fn origin_gauges(&self) -> Vec<OriginGauges> {
        let slots = self.shared.origin_slots.iter().zip(self.shared.origin_health.iter());
        slots
            .map(|(slots, health)| OriginGauges {
                in_flight: slots.in_flight(),
                limit: slots.limit(),
                healthy: u32::from(health.is_up()),
                health_checks: health.probes(),
            })
            .collect()
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn mesh(&self) -> &Arc<CoreMesh> {
        &self.shared.mesh
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.shared.access_log.as_deref()
    }

    /// This shard's counters.
    pub fn metrics(&self) -> &ShardMetrics {
        self.shared.metrics.shard(self.id)
    }

    /// Every shard's counters (for /metrics).
    pub fn metrics_all(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Marks a stretch of work on this core for the stall watchdog.
    pub fn busy(&self) -> Busy<'_> {
        self.shared.heartbeats.busy(self.id, &self.shared.metrics)
    }

    pub fn store(&self) -> &Rc<Store> {
        &self.store
    }

    pub fn forwards(&self) -> &Rc<Forwards> {
        &self.forwards
    }

    pub fn conns(&self) -> &Conns {
        &self.conns
    }

    /// Reads the clock for this loop turn: the time every decision of the
    /// turn uses, and the `Date` its responses carry. Returns it in ms.
    pub fn tick(&self, now: SystemTime) -> u64 {
        let now_ms = unix_ms(now);
        self.now_ms.set(now_ms);
        self.date.borrow_mut().refresh(now);
        now_ms
    }

    /// The time of the last [`Core::tick`].
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    pub fn date(&self) -> Ref<'_, DateCache> {
        self.date.borrow()
    }

    /// The response refusing a write now (failing disk, full log backlog;
    /// for a `sync` write, too many waiting or a disk past its deadline).
    pub fn write_refusal(&self, sync: bool) -> Option<Response> {
        let refusal = self.store.refusal(sync)?;
        let overloaded = |reason| {
            self.metrics().disk_refused(reason);
            Response::overloaded(&refusal.to_string())
        };
        Some(match refusal {
            Refusal::DiskFailing => Response::problem(507, &refusal.to_string()),
            Refusal::BacklogFull => overloaded(DiskRefusal::BacklogFull),
            Refusal::SyncWaitersFull => overloaded(DiskRefusal::SyncWaitersFull),
            Refusal::SyncTimeout => overloaded(DiskRefusal::SyncTimeout),
        })
    }

    /// Sends `message` to the shard `owner` (see [`Forwards::send`]).
    /// Sends a message that gets no reply, unless `owner`'s inbound queue
    /// is half full (what such a message may take of it). Returns whether it went.
    pub fn notify(&self, owner: u32, message: Message) -> bool {
        self.forwards.notify(owner, message, crate::runtime::mesh::FORWARD_QUEUE_ENTRIES / 2)
    }

    pub fn forward(&self, owner: u32, message: Message) -> Result<ReplyFuture, Response> {
        self.forwards.send(owner, message)
    }
}

#[cfg(test)]
mod tests;
