//! The `shardgate` binary.
//!
//! # Layout
//! - `config`: flags, `SHARDGATE_*` environment and `--config` file,
//!   validated into one plain `Config`.
//! - `wiring`: driver choice, CPU mapping, start-up lines, signals, drain.
//! - `check`: `shardgate check`, the host inspection.
//!
//! The work itself lives in the `shardgate-io` (sockets, runtimes, HTTP) and
//! `shardgate-shards` (pure state and rules) crates.

mod check;
mod config;
mod wiring;

use std::process::ExitCode;

/// The panic policy: a panic anywhere is a bug, and a core whose thread
/// died must not leave its `SO_REUSEPORT` listener accepting connections
/// nobody serves. So any panic ends the whole process after the default
/// report (the release profile also compiles with `panic = "abort"`), and
/// the service manager restarts it (`Restart=on-failure` in
/// deploy/shardgate.service); recovery then replays the log as after a
/// crash.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    abort_on_panic();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let check = args.get(1).is_some_and(|arg| arg == "check");
    if check {
        args.remove(1);
    }
    let config = match config::load(args) {
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
    if check {
        let cpus = match wiring::allowed_cpus() {
            Ok(cpus) => cpus,
            Err(error) => {
                eprintln!("shardgate: reading the CPU affinity mask: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let shard_count = config.shards.unwrap_or(cpus.len() as u32);
        return ExitCode::from(check::run(&config, shard_count, &cpus));
    }
    match wiring::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
