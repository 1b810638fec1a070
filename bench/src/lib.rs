//! shardgate's load generator and benchmark harness.
//!
//! # Layout
//! - [`accuracy`]: the rate limiter's error against an exact sliding log.
//! - [`eviction`]: hit ratio of S3-FIFO against LRU and CLOCK.
//! - [`schedule`]: open-loop arrival profiles (steady, bursts) and due times.
//! - [`workload`]: request generation (Zipf keys, value sizes, read/write mix,
//!   API keys) for shardgate, webdis or a static server.
//! - [`scenario`]: the TOML scenario files of `bench/scenarios/`.
//! - [`conn`]: one client connection, response parsing, `Stats` histograms.
//! - [`runner`]: generator threads, the open-loop scheduler, the closed
//!   loop, preloading, progress, server CPU and RSS.
//! - [`report`]: the Markdown table, JSON and SVG chart of a run.
//! - [`hop`]: the cross-core hop measurement.
//! - [`origin`]: a simulated origin server for gateway scenarios.
//! - [`procfs`]: reading a process's CPU time and RSS.

pub mod accuracy;
pub mod conn;
pub mod eviction;
pub mod execute;
pub mod hop;
pub mod origin;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod workload;
