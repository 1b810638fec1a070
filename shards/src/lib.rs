//! shardgate's pure core: everything that decides, nothing that does I/O.
//!
//! # Layout
//! - [`route`]: the key hash and the owner-shard function. Stable across
//!   versions: the durable log and future multi-node routing depend on it.
//! - [`breaker`]: the per-origin circuit breaker (closed, open, half-open).
//! - [`cluster`]: several nodes together: the Redis rate-limit scripts,
//!   the JetStream write partitions and names, the purge notices.
//! - [`compaction`]: per-segment live and dead bytes, record locations,
//!   and which segment to compact next.
//! - [`conditions`]: entity tags and `If-Match` / `If-None-Match` evaluation.
//! - [`evict`]: S3-FIFO, which values stay in memory.
//! - [`hint`]: hint files (a segment's records without values) and
//!   recovery from hints and whole segments.
//! - [`httpcache`]: the gateway's shared HTTP cache: RFC 9111 storage and
//!   freshness, RFC 5861 stale rules, RFC 9213 targeted fields, `Vary`
//!   variants (with `Accept-Encoding` normalised), hit-for-miss, the
//!   surrogate-key index.
//! - [`kvapi`]: the key-value API's request rules (keys, `?ttl=`,
//!   `X-Durability`), answering values or a status and a detail.
//! - [`kv`]: one shard's key-value state ([`kv::KvShard`]) with its memory
//!   budget, driven by [`kv::Op`] values and answering [`kv::Outcome`] values.
//! - [`pieces`]: a body held as shared pieces (a stored response).
//! - [`overload`]: overload control toward an origin: the adaptive
//!   concurrency limit, the fair waiting queue, the retry budget.
//! - [`ratelimit`]: sliding-window counters per client identity on its
//!   owner shard, and the leases other cores spend locally.
//! - [`range`]: byte ranges of a stored response and `If-Range` (RFC 9110 §14).
//! - [`quota`]: the rate limiter's arithmetic: client identities, lease
//!   sizes and lifetimes, state budgets.
//! - [`queued`]: the gateway's queued writes as records: reserved keys,
//!   ids, the request encoding and the final status.
//! - [`record`]: the durable log's record format (`encode`/`decode`), the
//!   segment scan and recovery of a shard's state from its segments.
//!
//! **Architecture Invariant:** this crate performs no I/O, spawns no thread and
//! never reads the clock. Time comes in as an argument (`now_ms`), results go
//! out as values.

pub mod breaker;
pub mod cluster;
pub mod compaction;
pub mod conditions;
pub mod evict;
pub mod hint;
pub mod httpcache;
pub mod kv;
pub mod kvapi;
pub mod overload;
pub mod pieces;
pub mod queued;
pub mod quota;
pub mod range;
pub mod ratelimit;
pub mod record;
pub mod route;
