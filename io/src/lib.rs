//! shardgate's I/O: everything that touches sockets, threads and the clock.
//!
//! # Layout
//! - [`server`]: start-up, pinned per-core threads and runtimes, the
//!   acceptor, mailbox and ticker tasks, graceful shutdown.
//! - [`conn`]: one task per connection (read, decode, dispatch, write).
//! - [`api`]: routes a decoded request to a service endpoint or a shard op.
//! - [`core`]: one core's state (`Core`) and forwarding to owner shards.
//! - [`limit`]: per-client rate limiting: identities, leases, 429s.
//! - [`mesh`]: the bounded cross-core mailboxes, the only shared state.
//! - [`http`]: the sans-IO HTTP/1.1 codec and response encoder.
//! - [`driver`]: io_uring probe and driver choice.
//! - [`log`]: a shard's segment files, its I/O thread, recovery at start.
//! - [`logging`]: structured log lines (key=value text or JSON).
//! - [`reader`]: reading evicted values back from segments, off the loop.
//! - [`rehome`]: moving every key to its owner under a new `--shards`.
//! - [`compact`]: background compaction of a shard's log segments.
//! - [`gateway`]: gateway mode: the caching reverse proxy, its origin
//!   client, circuit breakers and asynchronous writes.
//! - [`durable`]: a core's append buffer, group commit, durability waits.
//! - [`watchdog`]: the event-loop stall detector (one thread, no wake-ups on the cores).
//! - [`metrics`]: per-shard counters and the Prometheus rendering.
//! - [`config`]: the plain configuration the binary hands in.

pub mod api;
pub mod compact;
pub mod config;
pub mod conn;
pub mod core;
pub mod driver;
pub mod durable;
pub mod gateway;
pub mod http;
pub mod limit;
pub mod log;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod reader;
pub mod rehome;
pub mod server;
pub mod watchdog;
