//! The `shardgate` binary.
//!
//! # Layout
//! - `config`: flags, `SHARDGATE_*` environment and `--config` file,
//!   validated into one plain `Config`.
//! - `wiring`: driver choice, CPU mapping, start-up lines, signals, drain.
//!
//! The work itself lives in the `shardgate-io` (sockets, runtimes, HTTP) and
//! `shardgate-shards` (pure state and rules) crates.

mod config;
mod wiring;

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match config::load() {
        Ok(config) => config,
        Err(exit) => {
            if exit.code == 0 {
                println!("{}", exit.message);
            } else {
                eprintln!("{}", exit.message);
            }
            return ExitCode::from(exit.code);
        }
    };
    match wiring::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
