//! Black-box tests: each starts the real `shardgate` binary on port 0 with a
//! temporary data directory and talks raw HTTP/1.1 to it over sockets.

mod harness;

mod backpressure;
mod bench;
mod caching;
mod cli;
mod cluster;
mod durability;
mod gateway;
mod hardening;
mod kv;
mod limits;
mod operations;
mod origin;
mod protocol;
mod ratelimit;
mod routing;
mod service;
mod shutdown;
mod streaming;
