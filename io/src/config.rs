//! Every configuration type of the server, in one place: the plain values
//! the binary validates from flags, environment and file, and hands in.
//! Nothing in this crate reads flags or the environment.
//!
//! Durations are `std::time::Duration` throughout; sizes are in bytes and
//! named `*_bytes` or `*_bytes_max`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use shardgate_http::codec::Limits;
use shardgate_shards::quota;
use shardgate_shards::ratelimit::Policy;

/// The whole server's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shard_count: u32,
    /// The CPU each shard's thread is pinned to, by shard index.
    pub cpus: Vec<usize>,
    pub driver: Driver,
    pub limits: Limits,
    /// Memory budget for stored entries across all shards.
    pub cache_bytes: u64,
    /// Open connections per shard; more are refused with 503.
    pub connections_max: usize,
    /// Time a client may take to send a request head once it started.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// Time without progress while a request body is arriving.
    pub body_timeout: Duration,
    /// Time a peer may accept no byte of a response before it is closed.
    pub send_timeout: Duration,
    pub backlog: i32,
    pub log: LogConfig,
    pub rate_limits: RateLimits,
    pub access_log: AccessLogConfig,
    /// Gateway mode (docs/spec.md §7): `Some` when `--origin` is given.
    pub gateway: Option<GatewayConfig>,
    /// Several nodes together (docs/spec.md §8): `Some` when
    /// `--cluster-redis` or `--cluster-nats` is given.
    pub cluster: Option<ClusterConfig>,
}

/// `--cluster-redis`, `--cluster-nats`, `--node-id`, `--cluster-size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT`: global rate limits.
    pub redis: Option<String>,
    /// `nats://HOST:PORT` (JetStream enabled): writes, their statuses, purges.
    pub nats: Option<String>,
    /// This node's name in purge notices and logs.
    pub node_id: String,
    /// Nodes behind the router: while Redis is unreachable each node
    /// enforces its limits divided by this.
    pub size: u32,
}

/// `--access-log` and `--access-log-format`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: AccessLogTarget,
    pub format: AccessLogFormat,
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` pairs, logfmt style.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access log lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    #[default]
    Off,
    Stdout,
    /// A file, appended to and reopened on SIGHUP (for logrotate).
    File(PathBuf),
}

/// In gateway mode the key-value store holds only the asynchronous write
/// queue: it gets this fraction of each shard's `--cache-bytes`, and the
/// HTTP cache the rest.
const GATEWAY_KV_SHARE_DIVISOR: u64 = 16;

impl ServerConfig {
    /// Each shard's memory budget for key-value values.
    pub fn kv_bytes_per_shard(&self) -> u64 {
        let per_shard = self.cache_bytes / u64::from(self.shard_count);
        match self.gateway {
            None => per_shard,
            Some(_) => per_shard / GATEWAY_KV_SHARE_DIVISOR,
        }
    }

    /// Each shard's memory budget for stored origin responses (gateway mode).
    pub fn http_cache_bytes_per_shard(&self) -> u64 {
        self.cache_bytes / u64::from(self.shard_count) - self.kv_bytes_per_shard()
    }
}

/// What the operator asked for (`--io-driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverChoice {
    Auto,
    Uring,
    Epoll,
}

/// io_uring set-up flags, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFlags {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1).
    DeferTaskrun,
    /// `IORING_SETUP_COOP_TASKRUN` (Linux 5.19).
    CoopTaskrun,
    Plain,
}

/// The driver every core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Uring(RingFlags),
    Epoll,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Driver::Uring(RingFlags::DeferTaskrun) => f.write_str("io_uring (single_issuer+defer_taskrun)"),
            Driver::Uring(RingFlags::CoopTaskrun) => f.write_str("io_uring (coop_taskrun)"),
            Driver::Uring(RingFlags::Plain) => f.write_str("io_uring"),
            Driver::Epoll => f.write_str("epoll"),
        }
    }
}

/// How writes are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// At append to the in-memory buffer; on disk within the flush interval.
    Async,
    /// After the fdatasync that covers the record.
    Sync,
}

/// A shard's log: where, how durable, how large.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub flush_interval: Duration,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes_max: u64,
    /// Bytes appended but not yet durable; past it, writes get 503.
    pub backlog_bytes_max: usize,
    /// Longest a sync write or a cold read may wait for the disk
    /// (`--disk-queue-timeout`): a group commit outstanding this long
    /// turns new sync writes away, a read queued this long gets 503.
    pub disk_queue_timeout: Duration,
    /// Test hook: recovery waits this long first, so a test can see the
    /// server while it recovers. Zero in production.
    pub recovery_delay: Duration,
    /// Test hook: while this file exists, log writes fail with ENOSPC
    /// (`storage::segments::Faulty`). None in production.
    pub full_disk_switch: Option<PathBuf>,
    /// Test hook: while this file exists, log fdatasyncs and cold reads
    /// wait (`storage::segments::Faulty`). None in production.
    pub stall_disk_switch: Option<PathBuf>,
}

/// The rate-limit configuration: policies and the state budget.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    /// Limit on every request of an identity (`--rate-limit`); None: off.
    pub all: Option<Policy>,
    /// Limit on unsafe methods (`--rate-limit-writes`); None: off.
    pub writes: Option<Policy>,
    /// Per-API-key replacements of `all` (`[rate_limit.keys]`); None: off for that key.
    pub keys: HashMap<Vec<u8>, Option<Policy>>,
    pub trust_forwarded_for: bool,
    /// Memory for identities' windows across all shards.
    pub state_bytes: u64,
}

impl RateLimits {
    pub fn enabled(&self) -> bool {
        self.all.is_some() || self.writes.is_some() || self.keys.values().any(Option::is_some)
    }

    /// Identity windows one shard may hold.
    pub fn slots_per_shard(&self, shard_count: u32) -> usize {
        quota::slots_per_shard(self.state_bytes, shard_count)
    }

    /// The longest window of any policy: idle longer, an identity holds nothing.
    pub fn window_ms_max(&self) -> u64 {
        let keyed = self.keys.values().flatten();
        self.all.iter().chain(self.writes.iter()).chain(keyed).map(|p| p.window_ms).max().unwrap_or(1)
    }
}

/// The gateway's settings (docs/spec.md §7).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub origins: Vec<OriginAddress>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Idle keep-alive connections kept per origin per shard.
    pub pool_connections_max: usize,
    /// Freshness of cacheable responses without any; zero: not stored.
    pub default_ttl: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub async_writes: bool,
    pub admin_token: Option<Secret>,
    pub write_retries: u32,
    pub write_queue_entries_max: usize,
    pub overload: OverloadConfig,
    pub cache: CacheConfig,
    pub health: HealthConfig,
}

/// What the gateway stores and how it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Largest response stored; larger ones stream through (`--cache-object-max`).
    pub object_bytes_max: u64,
    /// Heuristic freshness as a share of the time since `Last-Modified`
    /// (RFC 9111 §4.2.2); 0: off.
    pub heuristic_percent: u32,
    /// `Cache-Status` carries the cache key.
    pub status_key: bool,
    /// The surrogate-key index's memory, all shards together.
    pub tag_bytes_max: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig { object_bytes_max: 16 << 20, heuristic_percent: 0, status_key: false, tag_bytes_max: 32 << 20 }
    }
}

/// Active health checks of the origins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// `GET` this path; None: a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig { path: None, interval: Duration::from_secs(1) }
    }
}

/// How much of an origin's capacity shardgate may use, and what waits
/// (docs/spec.md §7, "Backpressure").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Requests in flight to one origin, all shards together.
    pub origin_limit: OriginLimit,
    /// Requests waiting for a slot of one origin, all shards together.
    pub queue_entries_max: usize,
    /// Longest a request waits for a slot.
    pub queue_timeout: Duration,
    /// Retries allowed per 100 requests to an origin (sliding window).
    pub retry_budget_percent: u32,
}

/// `--origin-max-connections`: a fixed number, or found from latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginLimit {
    Fixed(u32),
    Auto,
}

/// One `--origin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginAddress {
    /// As configured, for logs and metric labels.
    pub url: String,
    pub address: SocketAddr,
}

/// A secret setting (the admin token): its `Debug` never shows it, so no
/// log line or error that formats a configuration can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
