//! The server's plain configuration, validated by the binary and passed in.
//! Library code never reads flags or the environment.

use std::net::SocketAddr;

use crate::driver::Driver;
use crate::gateway::GatewayConfig;
use crate::http::codec::Limits;
use crate::limit::RateLimits;
use crate::log::LogConfig;

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
    /// Seconds a client may take to send a request head once it started.
    pub header_timeout_s: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub idle_timeout_s: u64,
    /// Seconds without progress while a request body is arriving.
    pub body_timeout_s: u64,
    pub backlog: i32,
    pub log: LogConfig,
    pub rate_limits: RateLimits,
    /// Gateway mode (SPEC §7): `Some` when `--origin` is given.
    pub gateway: Option<GatewayConfig>,
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
