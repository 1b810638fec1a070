//! From a validated [`Config`] to a running server: choose the driver, map
//! shards to CPUs, start, print the start-up lines, wait for a signal, drain.

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use shardgate_io::config::ServerConfig;
use shardgate_io::driver;
use shardgate_io::http::codec::Limits;
use shardgate_io::server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;

pub fn run(config: Config) -> Result<()> {
    // Register before any thread starts, so an early signal drains too.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let cpus = allowed_cpus().context("reading the CPU affinity mask")?;
    let shard_count = config.shards.unwrap_or(cpus.len() as u32);
    let (driver, warning) =
        driver::resolve(config.io_driver).map_err(|reason| anyhow::anyhow!("--io-driver uring: {reason}"))?;
    if let Some(warning) = warning {
        eprintln!("level=warn msg=\"{warning}\"");
    }
    // Durability (issue 3) and rate limiting (issue 4) are not built yet:
    // their flags are validated now so deployments need not change later.
    eprintln!(
        "level=info msg=\"values are held in memory only; durability and rate limiting are not active yet\" data_dir={} durability={:?} flush_interval={:?} rate_limit={:?}",
        config.data_dir.display(),
        config.durability,
        config.flush_interval,
        config.rate_limit
    );
    let server_config = ServerConfig {
        listen: config.listen,
        shard_count,
        cpus: (0..shard_count as usize).map(|i| cpus[i % cpus.len()]).collect(),
        driver,
        limits: Limits { head_bytes_max: config.max_header, body_bytes_max: config.max_body },
        cache_bytes: config.cache_bytes,
        connections_max: config.max_connections,
        header_timeout_s: config.header_timeout.as_secs(),
        idle_timeout_s: config.idle_timeout.as_secs(),
        body_timeout_s: config.body_timeout.as_secs(),
        backlog: config.backlog,
    };
    let server = server::start(server_config)?;
    let mut stdout = std::io::stdout().lock();
    for info in &server.shards {
        writeln!(stdout, "shard {}: cpu {}, driver {}", info.shard, info.cpu, info.driver)?;
    }
    writeln!(stdout, "listening on {}", server.local_addr)?;
    stdout.flush()?;
    drop(stdout);
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
    eprintln!("level=info msg=\"draining\" signal={name}");
    server.shutdown();
    server.join();
    eprintln!("level=info msg=\"stopped\"");
    Ok(())
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        set
    };
    // SAFETY: CPU_ISSET only reads the set.
    let cpus: Vec<usize> =
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect();
    if cpus.is_empty() {
        bail!("the affinity mask is empty");
    }
    Ok(cpus)
}
