//! Per-shard counters and their Prometheus text rendering.
//!
//! Each core writes only its own [`ShardMetrics`] (cache-line aligned, so
//! cores never share a written line); any core reads all of them to answer
//! `/metrics`. Single-writer counters are bumped with a relaxed load and
//! store, which needs no locked instruction. The one exception to "its own
//! core writes it": the log fields (`log_bytes_written`, `flushes`) are
//! written only by the shard's I/O thread, still a single writer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The routes requests are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Kv,
    Healthz,
    Readyz,
    Metrics,
    Other,
    /// Gateway mode: everything but the service endpoints.
    Gateway,
}

const ROUTES: [(Route, &str); 6] = [
    (Route::Kv, "kv"),
    (Route::Healthz, "healthz"),
    (Route::Readyz, "readyz"),
    (Route::Metrics, "metrics"),
    (Route::Other, "other"),
    (Route::Gateway, "gateway"),
];

/// The statuses shardgate sends; anything else is counted as the last slot.
const STATUSES: [u16; 23] =
    [200, 201, 204, 304, 400, 404, 405, 408, 412, 413, 414, 417, 429, 431, 500, 502, 503, 504, 507, 202, 401, 403, 0];

/// Upper bounds of every duration histogram, in microseconds.
const DURATION_BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// A single-writer latency histogram with `DURATION_BOUNDS_US` buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records `count` observations of `micros` each.
    pub fn record(&self, micros: u64, count: u64) {
        let slot = DURATION_BOUNDS_US.iter().position(|&b| micros <= b).unwrap_or(DURATION_BOUNDS_US.len());
        bump(&self.buckets[slot], count);
        bump(&self.sum_us, micros * count);
    }

    fn render(&self, out: &mut String, name: &str, shard: usize) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = match DURATION_BOUNDS_US.get(i) {
                Some(&bound) => format!("{}", bound as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {cumulative}");
    }
}

/// Selects one per-shard counter or gauge.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// Status code → slot in `STATUSES`, so counting is one load.
const STATUS_SLOTS: [u8; 600] = {
    let mut slots = [(STATUSES.len() - 1) as u8; 600];
    let mut i = 0;
    while i < STATUSES.len() - 1 {
        slots[STATUSES[i] as usize] = i as u8;
        i += 1;
    }
    slots
};

fn status_slot(status: u16) -> usize {
    STATUS_SLOTS.get(status as usize).map_or(STATUSES.len() - 1, |&slot| slot as usize)
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed) + by, Relaxed);
}

#[repr(align(128))]
#[derive(Default)]
pub struct ShardMetrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    durations: Histogram,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_evictions: AtomicU64,
    disk_reads: AtomicU64,
    stalls: AtomicU64,
    stall_durations: Histogram,
    /// Written by the shard's I/O thread.
    log_bytes_written: AtomicU64,
    /// Written by the shard's I/O thread: write + fdatasync per flush.
    flushes: Histogram,
    log_disk_bytes: AtomicU64,
    log_live_bytes: AtomicU64,
    compactions: AtomicU64,
    compaction_reclaimed: AtomicU64,
    compaction_steps: Histogram,
    hops_out: AtomicU64,
    hops_in: AtomicU64,
    shed: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    bytes_held: AtomicU64,
    bytes_max: AtomicU64,
    keys: AtomicU64,
    expired_swept: AtomicU64,
    rate_allowed: AtomicU64,
    rate_limited: AtomicU64,
    leases_granted: AtomicU64,
    leases_refused: AtomicU64,
    rate_identities: AtomicU64,
    rate_evicted: AtomicU64,
    leases_held: AtomicU64,
    /// Gateway responses by `X-Cache` value, in [`CacheResult`] order.
    gateway_results: [AtomicU64; CACHE_RESULTS.len()],
    gateway_cache_bytes: AtomicU64,
    gateway_cache_objects: AtomicU64,
    origin_requests: AtomicU64,
    origin_failures: AtomicU64,
    breaker_opens: AtomicU64,
    /// Per `--origin`, as [`shardgate_shards::breaker::BreakerState::gauge`].
    breaker_states: [AtomicU64; ORIGINS_MAX],
    writes_queued: AtomicU64,
    writes_delivered: AtomicU64,
    writes_failed: AtomicU64,
    writes_retried: AtomicU64,
    write_statuses_evicted: AtomicU64,
    send_timeouts: AtomicU64,
    output_waits: AtomicU64,
    access_log_dropped: AtomicU64,
    /// Per `--origin`: requests of this shard waiting for a slot.
    origin_queue_depths: [AtomicU64; ORIGINS_MAX],
    /// Per reason ([`REJECTIONS`] order), per `--origin`.
    origin_rejections: [[AtomicU64; ORIGINS_MAX]; REJECTIONS.len()],
    /// Per outcome (spent, refused), per `--origin`.
    origin_retries: [[AtomicU64; ORIGINS_MAX]; 2],
    /// Per reason ([`DISK_REFUSALS`] order).
    disk_refusals: [AtomicU64; DISK_REFUSALS.len()],
}

/// Why a request was refused a slot of an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The origin's queue (this core's share of it) was full.
    QueueFull,
    /// The client identity held its share of the queue.
    QueueShare,
    /// No slot came free within `--origin-queue-timeout`.
    QueueTimeout,
    /// The oldest waiter has waited half of `--origin-queue-timeout`: a
    /// newcomer behind it would likely time out, so it is refused at once.
    QueueStanding,
    /// No slot free, and a stale copy the origin allows on error was served
    /// at once instead of waiting (a revalidation under overload).
    StaleServed,
}

const REJECTIONS: [(Rejection, &str); 5] = [
    (Rejection::QueueFull, "queue_full"),
    (Rejection::QueueShare, "queue_share"),
    (Rejection::QueueTimeout, "queue_timeout"),
    (Rejection::QueueStanding, "queue_standing"),
    (Rejection::StaleServed, "stale_served"),
];

impl Rejection {
    pub fn name(self) -> &'static str {
        REJECTIONS[self as usize].1
    }
}

/// Why a request was turned away from the disk at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskRefusal {
    /// The shard's cold-read queue was full.
    ReadQueueFull,
    /// A cold read waited `--disk-queue-timeout`.
    ReadTimeout,
    /// As many sync writes as allowed wait for their group commit.
    SyncWaitersFull,
    /// The outstanding group commit is older than `--disk-queue-timeout`.
    SyncTimeout,
    /// The unflushed log backlog is full.
    BacklogFull,
}

const DISK_REFUSALS: [(DiskRefusal, &str); 5] = [
    (DiskRefusal::ReadQueueFull, "read_queue_full"),
    (DiskRefusal::ReadTimeout, "read_timeout"),
    (DiskRefusal::SyncWaitersFull, "sync_waiters_full"),
    (DiskRefusal::SyncTimeout, "sync_timeout"),
    (DiskRefusal::BacklogFull, "backlog_full"),
];

/// Most `--origin` flags (a fixed array keeps the metrics allocation-free).
pub const ORIGINS_MAX: usize = 16;

/// The `X-Cache` value of a gateway response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

const CACHE_RESULTS: [(CacheResult, &str); 5] = [
    (CacheResult::Hit, "HIT"),
    (CacheResult::Miss, "MISS"),
    (CacheResult::Stale, "STALE"),
    (CacheResult::Revalidated, "REVALIDATED"),
    (CacheResult::Bypass, "BYPASS"),
];

impl CacheResult {
    pub fn name(self) -> &'static str {
        CACHE_RESULTS[self as usize].1
    }
}

impl ShardMetrics {
    pub fn request(&self, route: Route, status: u16) {
        bump(&self.requests[route as usize][status_slot(status)], 1);
    }

    /// Records `count` requests that each took `micros`.
    pub fn duration(&self, micros: u64, count: u64) {
        self.durations.record(micros, count);
    }

    /// An evicted value was read back from its segment.
    pub fn disk_read(&self) {
        bump(&self.disk_reads, 1);
    }

    /// A read found its key (`hit`) or not.
    pub fn lookup(&self, hit: bool) {
        bump(if hit { &self.cache_hits } else { &self.cache_misses }, 1);
    }

    /// A stretch of work held the loop for `micros`, over the stall
    /// threshold. Returns the stall count.
    pub fn stall(&self, micros: u64) -> u64 {
        bump(&self.stalls, 1);
        self.stall_durations.record(micros, 1);
        self.stalls.load(Relaxed)
    }

    /// A compaction step ran for `micros` on the event loop.
    pub fn compaction_step(&self, micros: u64) {
        self.compaction_steps.record(micros, 1);
    }

    /// A segment of `bytes` was compacted away.
    pub fn compacted(&self, bytes: u64) {
        bump(&self.compactions, 1);
        bump(&self.compaction_reclaimed, bytes);
    }

    pub fn log_bytes(&self, disk: u64, live: u64) {
        self.log_disk_bytes.store(disk, Relaxed);
        self.log_live_bytes.store(live, Relaxed);
    }

    /// One flush of the log: `bytes` written and fdatasynced in `micros`.
    /// Called by the shard's I/O thread only.
    pub fn flushed(&self, bytes: u64, micros: u64) {
        bump(&self.log_bytes_written, bytes);
        self.flushes.record(micros, 1);
    }

    pub fn hop_out(&self) {
        bump(&self.hops_out, 1);
    }

    pub fn hops_in(&self, count: u64) {
        bump(&self.hops_in, count);
    }

    pub fn shed(&self) {
        bump(&self.shed, 1);
    }

    pub fn shed_count(&self) -> u64 {
        self.shed.load(Relaxed)
    }

    pub fn connections(&self, open: usize) {
        self.connections_open.store(open as u64, Relaxed);
    }

    pub fn connection_refused(&self) {
        bump(&self.connections_refused, 1);
    }

    pub fn store(&self, bytes_held: u64, bytes_max: u64, keys: usize, evictions: u64) {
        self.cache_evictions.store(evictions, Relaxed);
        self.bytes_held.store(bytes_held, Relaxed);
        self.bytes_max.store(bytes_max, Relaxed);
        self.keys.store(keys as u64, Relaxed);
    }

    pub fn rate_allowed(&self) {
        bump(&self.rate_allowed, 1);
    }

    pub fn rate_limited(&self) {
        bump(&self.rate_limited, 1);
    }

    /// The owner answered a lease request, granting permits or not.
    pub fn lease(&self, granted: bool) {
        bump(if granted { &self.leases_granted } else { &self.leases_refused }, 1);
    }

    pub fn rate_state(&self, identities: usize, evicted: u64, leases_held: usize) {
        self.rate_identities.store(identities as u64, Relaxed);
        self.rate_evicted.store(evicted, Relaxed);
        self.leases_held.store(leases_held as u64, Relaxed);
    }

    pub fn expired(&self, count: usize) {
        bump(&self.expired_swept, count as u64);
    }

    pub fn gateway_result(&self, result: CacheResult) {
        bump(&self.gateway_results[result as usize], 1);
    }

    pub fn gateway_cache(&self, bytes: u64, objects: usize) {
        self.gateway_cache_bytes.store(bytes, Relaxed);
        self.gateway_cache_objects.store(objects as u64, Relaxed);
    }

    /// One exchange with an origin; `failed` when it counted against the breaker.
    pub fn origin_request(&self, failed: bool) {
        bump(&self.origin_requests, 1);
        if failed {
            bump(&self.origin_failures, 1);
        }
    }

    /// The breaker of origin `index` now reads `state`; `opened` counts a new opening.
    pub fn breaker(&self, index: usize, state: u8, opened: bool) {
        self.breaker_states[index].store(u64::from(state), Relaxed);
        if opened {
            bump(&self.breaker_opens, 1);
        }
    }

    pub fn writes(&self, queued: usize) {
        self.writes_queued.store(queued as u64, Relaxed);
    }

    /// An async write left the queue: delivered, or failed for good.
    pub fn write_done(&self, delivered: bool) {
        bump(if delivered { &self.writes_delivered } else { &self.writes_failed }, 1);
    }

    pub fn write_retried(&self) {
        bump(&self.writes_retried, 1);
    }

    /// A connection was closed because its peer accepted no byte for the send timeout.
    pub fn send_timeout(&self) {
        bump(&self.send_timeouts, 1);
    }

    /// A connection waited for the core's output budget before decoding more.
    pub fn output_wait(&self) {
        bump(&self.output_waits, 1);
    }

    /// An access log line was dropped: the writer's queue was full.
    pub fn access_log_dropped(&self) {
        bump(&self.access_log_dropped, 1);
    }

    /// A finished write's status was dropped to keep the status store in bounds.
    pub fn write_status_evicted(&self) {
        bump(&self.write_statuses_evicted, 1);
    }

    /// `waiting` requests of this shard wait for a slot of origin `index`.
    pub fn origin_queue(&self, index: usize, waiting: usize) {
        self.origin_queue_depths[index].store(waiting as u64, Relaxed);
    }

    /// A request was refused a slot of origin `index`.
    /// (`StaleServed` is not shed: that request got its stale copy.)
    pub fn origin_rejected(&self, index: usize, reason: Rejection) {
        bump(&self.origin_rejections[reason as usize][index], 1);
        if reason != Rejection::StaleServed {
            bump(&self.shed, 1);
        }
    }

    /// A retry to origin `index` was sent (`spent`) or refused by the budget.
    pub fn origin_retry(&self, index: usize, spent: bool) {
        bump(&self.origin_retries[usize::from(!spent)][index], 1);
    }

    /// A request was turned away from the disk.
    pub fn disk_refused(&self, reason: DiskRefusal) {
        bump(&self.disk_refusals[reason as usize], 1);
        bump(&self.shed, 1);
    }
}

/// What /metrics shows of an origin's process-wide slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginGauges {
    pub in_flight: u32,
    pub limit: u32,
    /// 1 while the process-wide health check finds the origin up.
    pub healthy: u32,
    /// Health probes sent so far.
    pub health_checks: u64,
}

/// The per-shard families that are one counter or gauge each: name, type,
/// help, and the field that holds the value.
const FAMILIES: [(&str, &str, &str, Field); 39] = [
    ("shardgate_cross_core_hops_total", "counter", "Requests forwarded to their owner shard, by sending shard.", |m| {
        &m.hops_out
    }),
    ("shardgate_cross_core_received_total", "counter", "Requests received from other shards, by owner shard.", |m| {
        &m.hops_in
    }),
    ("shardgate_load_shed_total", "counter", "Requests answered 503 because a bounded queue was full.", |m| &m.shed),
    ("shardgate_connections_open", "gauge", "Open client connections.", |m| &m.connections_open),
    (
        "shardgate_send_timeouts_total",
        "counter",
        "Connections closed because the client accepted no byte of a response for --send-timeout.",
        |m| &m.send_timeouts,
    ),
    (
        "shardgate_output_budget_waits_total",
        "counter",
        "Times a connection waited before decoding more because the shard's unwritten output was at its budget.",
        |m| &m.output_waits,
    ),
    (
        "shardgate_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer's queue was full (the event loop never waits for the log).",
        |m| &m.access_log_dropped,
    ),
    ("shardgate_connections_refused_total", "counter", "Connections refused at --max-connections.", |m| {
        &m.connections_refused
    }),
    ("shardgate_cache_bytes", "gauge", "Bytes held by stored entries, as charged against the budget.", |m| {
        &m.bytes_held
    }),
    ("shardgate_cache_budget_bytes", "gauge", "Each shard's share of --cache-bytes.", |m| &m.bytes_max),
    ("shardgate_keys", "gauge", "Keys stored.", |m| &m.keys),
    ("shardgate_cache_hits_total", "counter", "Reads that found their key, by owner shard.", |m| &m.cache_hits),
    ("shardgate_cache_misses_total", "counter", "Reads of a missing or expired key, by owner shard.", |m| {
        &m.cache_misses
    }),
    (
        "shardgate_cache_evictions_total",
        "counter",
        "Values evicted from memory to stay within --cache-bytes (their keys and records stay).",
        |m| &m.cache_evictions,
    ),
    ("shardgate_cache_disk_reads_total", "counter", "Evicted values read back from their log segment.", |m| {
        &m.disk_reads
    }),
    (
        "shardgate_log_bytes_written_total",
        "counter",
        "Log bytes written and fdatasynced to the shard's segments.",
        |m| &m.log_bytes_written,
    ),
    ("shardgate_log_disk_bytes", "gauge", "Bytes in the shard's log segments.", |m| &m.log_disk_bytes),
    ("shardgate_log_live_bytes", "gauge", "Bytes of log records still needed (current values).", |m| &m.log_live_bytes),
    ("shardgate_compactions_total", "counter", "Segments compacted away.", |m| &m.compactions),
    (
        "shardgate_compaction_reclaimed_bytes_total",
        "counter",
        "Segment bytes deleted by compaction (their live records were copied first).",
        |m| &m.compaction_reclaimed,
    ),
    (
        "shardgate_event_loop_stalls_total",
        "counter",
        "Stretches of work that held the shard's event loop for over 10 ms.",
        |m| &m.stalls,
    ),
    ("shardgate_expired_keys_total", "counter", "Expired keys reclaimed by the background sweep.", |m| {
        &m.expired_swept
    }),
    ("shardgate_ratelimit_allowed_total", "counter", "Requests within their client's rate limit.", |m| &m.rate_allowed),
    ("shardgate_ratelimit_limited_total", "counter", "Requests answered 429 by the rate limiter.", |m| &m.rate_limited),
    (
        "shardgate_ratelimit_leases_granted_total",
        "counter",
        "Permit leases this owner shard granted to other cores.",
        |m| &m.leases_granted,
    ),
    (
        "shardgate_ratelimit_leases_refused_total",
        "counter",
        "Lease requests this owner shard refused (the client was at its limit).",
        |m| &m.leases_refused,
    ),
    ("shardgate_ratelimit_identities", "gauge", "Client identity windows tracked by this owner shard.", |m| {
        &m.rate_identities
    }),
    (
        "shardgate_ratelimit_evicted_total",
        "counter",
        "Identity windows evicted to stay within --rate-limit-state-bytes.",
        |m| &m.rate_evicted,
    ),
    ("shardgate_ratelimit_leases_held", "gauge", "Leases this core holds from other shards.", |m| &m.leases_held),
    ("shardgate_gateway_cache_bytes", "gauge", "Bytes of stored origin responses (gateway mode).", |m| {
        &m.gateway_cache_bytes
    }),
    ("shardgate_gateway_cache_objects", "gauge", "Cache keys with stored origin responses.", |m| {
        &m.gateway_cache_objects
    }),
    ("shardgate_origin_requests_total", "counter", "Requests sent to an origin, by sending shard.", |m| {
        &m.origin_requests
    }),
    (
        "shardgate_origin_failures_total",
        "counter",
        "Origin exchanges that failed (connect error, timeout, bad response or 5xx).",
        |m| &m.origin_failures,
    ),
    ("shardgate_origin_breaker_opens_total", "counter", "Times a circuit to an origin opened.", |m| &m.breaker_opens),
    ("shardgate_async_writes_queued", "gauge", "Asynchronous writes waiting for delivery.", |m| &m.writes_queued),
    ("shardgate_async_writes_delivered_total", "counter", "Asynchronous writes the origin answered.", |m| {
        &m.writes_delivered
    }),
    (
        "shardgate_async_writes_failed_total",
        "counter",
        "Asynchronous writes given up after --write-retries (kept in the dead-letter segment).",
        |m| &m.writes_failed,
    ),
    ("shardgate_async_writes_retried_total", "counter", "Delivery attempts that are retried later.", |m| {
        &m.writes_retried
    }),
    (
        "shardgate_async_write_statuses_evicted_total",
        "counter",
        "Finished writes' statuses dropped, oldest first, to keep the status store within its bytes.",
        |m| &m.write_statuses_evicted,
    ),
];

/// What a lease request to Redis came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    Granted = 0,
    Refused = 1,
    /// Redis did not answer in time: the core fell back to the node's limit.
    Unavailable = 2,
}

/// What a delivery from the write stream came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered = 0,
    Failed = 1,
    /// Negatively acknowledged, to be delivered again after a backoff.
    Retried = 2,
    /// Already finished (a republished write): acknowledged, not sent.
    Skipped = 3,
}

/// The cluster's counters (docs/spec.md §8), process-wide: written by the
/// cluster's side thread and by any core, so they add atomically.
#[derive(Default)]
pub struct ClusterMetrics {
    enabled: bool,
    /// Redis, NATS: 1 while reachable.
    up: [AtomicU64; 2],
    leases: [AtomicU64; 3],
    published: AtomicU64,
    deliveries: [AtomicU64; 4],
    notices_sent: AtomicU64,
    notices_applied: AtomicU64,
    queue_full: AtomicU64,
}

impl ClusterMetrics {
    pub fn set_up(&self, service: usize, up: bool) {
        self.up[service].store(u64::from(up), Relaxed);
    }

    pub fn lease(&self, result: LeaseResult) {
        self.leases[result as usize].fetch_add(1, Relaxed);
    }

    pub fn published(&self) {
        self.published.fetch_add(1, Relaxed);
    }

    pub fn delivery(&self, result: DeliveryResult) {
        self.deliveries[result as usize].fetch_add(1, Relaxed);
    }

    pub fn notice_sent(&self) {
        self.notices_sent.fetch_add(1, Relaxed);
    }

    pub fn notice_applied(&self) {
        self.notices_applied.fetch_add(1, Relaxed);
    }

    pub fn queue_full(&self) {
        self.queue_full.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String) {
        if !self.enabled {
            return;
        }
        header(out, "shardgate_cluster_up", "gauge", "1 while the service (redis, nats) answers, else 0.");
        for (service, up) in ["redis", "nats"].iter().zip(&self.up) {
            let _ = writeln!(out, "shardgate_cluster_up{{service=\"{service}\"}} {}", up.load(Relaxed));
        }
        let name = "shardgate_cluster_leases_total";
        header(out, name, "counter", "Rate-limit lease requests to Redis by result (granted, refused, unavailable).");
        for (result, count) in ["granted", "refused", "unavailable"].iter().zip(&self.leases) {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", count.load(Relaxed));
        }
        let name = "shardgate_cluster_writes_published_total";
        header(out, name, "counter", "Writes this node published to the write stream.");
        let _ = writeln!(out, "{name} {}", self.published.load(Relaxed));
        let name = "shardgate_cluster_deliveries_total";
        header(
            out,
            name,
            "counter",
            "Stream writes this node handled, by result (delivered, failed, retried, skipped).",
        );
        for (result, count) in ["delivered", "failed", "retried", "skipped"].iter().zip(&self.deliveries) {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", count.load(Relaxed));
        }
        let name = "shardgate_cluster_purge_notices_total";
        header(out, name, "counter", "Purge notices sent to the other nodes and applied from them.");
        let _ = writeln!(out, "{name}{{direction=\"sent\"}} {}", self.notices_sent.load(Relaxed));
        let _ = writeln!(out, "{name}{{direction=\"applied\"}} {}", self.notices_applied.load(Relaxed));
        let name = "shardgate_cluster_queue_full_total";
        header(
            out,
            name,
            "counter",
            "Requests a core could not hand to the cluster thread (its queue full); each took its fallback.",
        );
        let _ = writeln!(out, "{name} {}", self.queue_full.load(Relaxed));
    }
}

/// All shards' metrics.
pub struct Metrics {
    shards: Box<[ShardMetrics]>,
    /// The `--origin` URLs, labels of the breaker gauge (gateway mode).
    origins: Vec<String>,
    cluster: ClusterMetrics,
}

impl Metrics {
    pub fn new(shard_count: u32) -> Metrics {
        Metrics {
            shards: (0..shard_count).map(|_| ShardMetrics::default()).collect(),
            origins: Vec::new(),
            cluster: ClusterMetrics::default(),
        }
    }

    /// Shows the cluster's families in /metrics.
    pub fn with_cluster(mut self) -> Metrics {
        self.cluster.enabled = true;
        self
    }

    pub fn cluster(&self) -> &ClusterMetrics {
        &self.cluster
    }

    /// Names the origins whose breakers /metrics shows (at most [`ORIGINS_MAX`]).
    pub fn with_origins(mut self, origins: Vec<String>) -> Metrics {
        assert!(origins.len() <= ORIGINS_MAX, "origin count is validated against ORIGINS_MAX");
        self.origins = origins;
        self
    }

    pub fn shard(&self, shard: u32) -> &ShardMetrics {
        &self.shards[shard as usize]
    }

    /// Renders every family in the Prometheus text exposition format 0.0.4.
    /// `channel_depths`: each shard's inbound cross-core queue; `ready`:
    /// whether every shard serves; `origins`: each origin's slots.
    pub fn render(&self, channel_depths: &[usize], ready: bool, origins: &[OriginGauges]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        self.render_durations(&mut out);
        for (name, kind, help, field) in FAMILIES {
            header(&mut out, name, kind, help);
            for (shard, metrics) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", field(metrics).load(Relaxed));
            }
        }
        header(
            &mut out,
            "shardgate_channel_depth",
            "gauge",
            "Requests waiting in each shard's inbound cross-core queue.",
        );
        for (shard, depth) in channel_depths.iter().enumerate() {
            let _ = writeln!(out, "shardgate_channel_depth{{shard=\"{shard}\"}} {depth}");
        }
        header(&mut out, "shardgate_gateway_responses_total", "counter", "Gateway responses by X-Cache value.");
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (result, name) in CACHE_RESULTS {
                let count = metrics.gateway_results[result as usize].load(Relaxed);
                let _ =
                    writeln!(out, "shardgate_gateway_responses_total{{shard=\"{shard}\",x_cache=\"{name}\"}} {count}");
            }
        }
        header(
            &mut out,
            "shardgate_origin_breaker_state",
            "gauge",
            "Circuit breaker of each origin on each shard: 0 closed, 1 open, 2 half-open.",
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (index, origin) in self.origins.iter().enumerate() {
                let state = metrics.breaker_states[index].load(Relaxed);
                let _ =
                    writeln!(out, "shardgate_origin_breaker_state{{shard=\"{shard}\",origin=\"{origin}\"}} {state}");
            }
        }
        self.render_overload(&mut out, origins);
        self.cluster.render(&mut out);
        header(&mut out, "shardgate_ready", "gauge", "1 when every shard is serving.");
        let _ = writeln!(out, "shardgate_ready {}", u8::from(ready));
        out
    }

    fn render_overload(&self, out: &mut String, origins: &[OriginGauges]) {
        type Gauge = fn(&OriginGauges) -> u32;
        let process_wide: [(&str, &str, Gauge); 3] = [
            ("shardgate_origin_in_flight", "Requests in flight to each origin, all shards together.", |g| g.in_flight),
            ("shardgate_origin_limit", "Requests each origin may have in flight now (fixed, or found by auto).", |g| {
                g.limit
            }),
            (
                "shardgate_origin_healthy",
                "1 while the health check finds each origin up (rise 2, fall 3), else 0.",
                |g| g.healthy,
            ),
        ];
        for (name, help, value) in process_wide {
            header(out, name, "gauge", help);
            for (origin, gauges) in self.origins.iter().zip(origins) {
                let _ = writeln!(out, "{name}{{origin=\"{origin}\"}} {}", value(gauges));
            }
        }
        let name = "shardgate_origin_health_checks_total";
        header(out, name, "counter", "Health probes sent to each origin by the process's one prober.");
        for (origin, gauges) in self.origins.iter().zip(origins) {
            let _ = writeln!(out, "{name}{{origin=\"{origin}\"}} {}", gauges.health_checks);
        }
        header(out, "shardgate_origin_queue_depth", "gauge", "Requests waiting for a slot of each origin, by shard.");
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (index, origin) in self.origins.iter().enumerate() {
                let depth = metrics.origin_queue_depths[index].load(Relaxed);
                let _ = writeln!(out, "shardgate_origin_queue_depth{{shard=\"{shard}\",origin=\"{origin}\"}} {depth}");
            }
        }
        let help = "Requests refused a slot of each origin, by reason (queue_full, queue_share, queue_timeout, queue_standing, stale_served).";
        header(out, "shardgate_origin_rejected_total", "counter", help);
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (reason, reason_name) in REJECTIONS {
                for (index, origin) in self.origins.iter().enumerate() {
                    let count = metrics.origin_rejections[reason as usize][index].load(Relaxed);
                    let _ = writeln!(
                        out,
                        "shardgate_origin_rejected_total{{shard=\"{shard}\",origin=\"{origin}\",reason=\"{reason_name}\"}} {count}"
                    );
                }
            }
        }
        let help = "Retries to each origin (async-write redeliveries included) the retry budget spent or refused.";
        header(out, "shardgate_origin_retries_total", "counter", help);
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (slot, outcome) in ["spent", "refused"].into_iter().enumerate() {
                for (index, origin) in self.origins.iter().enumerate() {
                    let count = metrics.origin_retries[slot][index].load(Relaxed);
                    let _ = writeln!(
                        out,
                        "shardgate_origin_retries_total{{shard=\"{shard}\",origin=\"{origin}\",outcome=\"{outcome}\"}} {count}"
                    );
                }
            }
        }
        let help = "Requests the disk turned away at once (cold-read queue or deadline, sync-write waiters or deadline, log backlog).";
        header(out, "shardgate_disk_rejected_total", "counter", help);
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (reason, name) in DISK_REFUSALS {
                let count = metrics.disk_refusals[reason as usize].load(Relaxed);
                let _ = writeln!(out, "shardgate_disk_rejected_total{{shard=\"{shard}\",reason=\"{name}\"}} {count}");
            }
        }
    }

    fn render_requests(&self, out: &mut String) {
        header(out, "shardgate_requests_total", "counter", "Requests answered, by shard, route and status.");
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (route, route_name) in ROUTES {
                for (slot, status) in STATUSES.iter().enumerate() {
                    let count = metrics.requests[route as usize][slot].load(Relaxed);
                    if count > 0 {
                        let status = if *status == 0 { "other".to_string() } else { status.to_string() };
                        let _ = writeln!(
                            out,
                            "shardgate_requests_total{{shard=\"{shard}\",route=\"{route_name}\",status=\"{status}\"}} {count}"
                        );
                    }
                }
            }
        }
    }

    fn render_durations(&self, out: &mut String) {
        type Select = fn(&ShardMetrics) -> &Histogram;
        let histograms: [(&str, &str, Select); 4] = [
            ("shardgate_request_duration_seconds", "Time from reading a request to encoding its response.", |m| {
                &m.durations
            }),
            ("shardgate_log_flush_duration_seconds", "One group commit: write and fdatasync of the log buffer.", |m| {
                &m.flushes
            }),
            (
                "shardgate_compaction_step_seconds",
                "One step of compaction work on the event loop (bounded to yield to requests).",
                |m| &m.compaction_steps,
            ),
            (
                "shardgate_event_loop_stall_seconds",
                "How long the event loop could not run, for stalls over 10 ms.",
                |m| &m.stall_durations,
            ),
        ];
        for (name, help, select) in histograms {
            header(out, name, "histogram", help);
            for (shard, metrics) in self.shards.iter().enumerate() {
                select(metrics).render(out, name, shard);
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
