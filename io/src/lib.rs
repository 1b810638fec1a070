//! shardgate's I/O: everything that touches sockets, threads and the clock,
//! in layers that import only downward (top first):
//!
//! - [`server`]: start-up, pinned per-core threads and runtimes, the
//!   acceptor, mailbox and ticker tasks, graceful shutdown.
//! - [`conn`]: one task per connection (read, decode, dispatch, write).
//! - [`dispatch`]: routes a request, or a message from another core, to
//!   the feature that serves it.
//! - features, side by side: [`kv`] (the key-value API), [`limit`]
//!   (per-client rate limiting), [`gateway`] (the caching reverse proxy
//!   and its asynchronous writes).
//! - [`cluster`]: the link to the other nodes' services (Redis, NATS
//!   JetStream) through a side thread; nothing runs without the cluster flags.
//! - [`core`]: one core's state: its store, its forwarded requests, its
//!   connections, its clock.
//! - [`origin`]: the origin client (pool, timeouts, balancing, breakers,
//!   retry budget); knows nothing of caching. [`admission`]: the slots
//!   and the fair queue in front of each origin.
//! - [`storage`]: segments, group commit, cold reads, compaction,
//!   re-homing, hint files; knows nothing of HTTP.
//! - [`runtime`]: driver choice, listeners, the cross-core mesh, work off
//!   the loop, metrics, the stall watchdog, logging.
//! - [`config`]: every configuration type, plain values the binary hands in.
//!
//! The HTTP/1.1 codec is the `shardgate-http` crate; pure state and rules
//! are `shardgate-shards`.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod core;
pub mod dispatch;
pub mod gateway;
pub mod kv;
pub mod limit;
pub mod origin;
pub mod runtime;
pub mod server;
pub mod storage;
