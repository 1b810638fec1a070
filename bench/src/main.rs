//! `shardgate-bench`: load generation and measurements for shardgate.
//!
//! # Layout
//! - `conn`: one client connection: pipelined requests, response parsing,
//!   latency histograms (`Stats`).
//! - `hop`: the cross-core hop measurement (local versus forwarded keys).
//! - `procfs`: the server's CPU time and peak RSS from /proc.

mod conn;
mod hop;
mod procfs;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shardgate-bench", version, about = "Load generator and benchmarks for shardgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// CPU per request for keys owned by the receiving core versus another core.
    Hop {
        /// Server address (a shardgate started with --shards 2 or more).
        #[arg(long)]
        addr: SocketAddr,
        /// PID of the server, for its CPU time.
        #[arg(long)]
        server_pid: u32,
        /// The server's shard count.
        #[arg(long, default_value_t = 2)]
        shards: u32,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Also write the Markdown report here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .context("building the load generator's runtime")?;
    match cli.command {
        Command::Hop { addr, server_pid, shards, connections, depth, rounds, seconds, out } => {
            let args = hop::HopArgs { addr, server_pid, shards, connections, depth, rounds, seconds };
            let report = runtime.block_on(hop::run(args))?;
            println!("{report}");
            if let Some(path) = out {
                std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
