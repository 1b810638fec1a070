//! From a validated [`Config`] to a running server: choose the driver, map
//! shards to CPUs, start, print the start-up lines, wait for a signal, drain.

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

use shardgate_io::config::{Limits, LogConfig, RateLimits, ServerConfig};
use shardgate_io::runtime::{driver, logging};
use shardgate_io::server;
use shardgate_io::storage::{rehome, segments};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;

pub fn run(config: Config) -> Result<()> {
    // Register before any thread starts, so an early signal drains too.
    logging::set_format(config.log_format);
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let cpus = allowed_cpus().context("reading the CPU affinity mask")?;
    let shard_count = config.shards.unwrap_or(cpus.len() as u32);
    let (driver, warning) =
        driver::resolve(config.io_driver).map_err(|reason| anyhow::anyhow!("--io-driver uring: {reason}"))?;
    if let Some(warning) = warning {
        logging::warn(&warning, &[]);
    }
    // Queued writes hold requests' Authorization and cookies: everything
    // this process creates is its user's alone (directories 0700, files 0600).
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    check_data_dir(&config.data_dir, shard_count, config.segment_bytes_max)?;
    let server_config = ServerConfig {
        listen: config.listen,
        shard_count,
        cpus: (0..shard_count as usize).map(|i| cpus[i % cpus.len()]).collect(),
        driver,
        limits: Limits { head_bytes_max: config.header_bytes_max, body_bytes_max: config.body_bytes_max },
        cache_bytes: config.cache_bytes,
        connections_max: config.connections_max,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        body_timeout: config.body_timeout,
        send_timeout: config.send_timeout,
        backlog: config.backlog,
        log: LogConfig {
            data_dir: config.data_dir.clone(),
            durability: config.durability,
            flush_interval: config.flush_interval,
            segment_bytes_max: config.segment_bytes_max,
            backlog_bytes_max: config.log_backlog_bytes_max as usize,
            disk_queue_timeout: config.disk_queue_timeout,
            recovery_delay: recovery_delay_for_tests(),
            full_disk_switch: std::env::var_os("SHARDGATE_TEST_FULL_DISK_FILE").map(std::path::PathBuf::from),
            stall_disk_switch: std::env::var_os("SHARDGATE_TEST_STALL_DISK_FILE").map(std::path::PathBuf::from),
        },
        rate_limits: RateLimits {
            all: config.rate_limit,
            writes: config.rate_limit_writes,
            keys: config.rate_limit_keys.clone(),
            trust_forwarded_for: config.trust_forwarded_for,
            state_bytes: config.rate_limit_state_bytes,
        },
        access_log: config.access_log.clone(),
        gateway: config.gateway.clone(),
        cluster: config.cluster.clone(),
    };
    log_mode(&config);
    let server = server::start(server_config)?;
    let mut stdout = std::io::stdout().lock();
    for info in &server.shards {
        writeln!(stdout, "shard {}: cpu {}, driver {}", info.shard, info.cpu, info.driver)?;
    }
    writeln!(stdout, "listening on {}", server.local_addr)?;
    stdout.flush()?;
    drop(stdout);
    // SIGHUP reopens the access log (logrotate); SIGTERM and SIGINT drain.
    let signal = signals.forever().find(|&signal| {
        if signal == SIGHUP {
            server.reopen_logs();
        }
        signal != SIGHUP
    });
    let name = if signal == Some(SIGINT) { "SIGINT" } else { "SIGTERM" };
    logging::info("draining", &[("signal", &name)]);
    server.shutdown();
    server.join();
    logging::info("stopped", &[]);
    Ok(())
}

/// One line each for gateway mode and cluster mode, naming what they use.
fn log_mode(config: &Config) {
    if let Some(gateway) = &config.gateway {
        let origins: Vec<&str> = gateway.origins.iter().map(|o| o.url.as_str()).collect();
        logging::info("gateway mode", &[("origins", &origins.join(",")), ("async_writes", &gateway.async_writes)]);
    }
    if let Some(cluster) = &config.cluster {
        let services = [("redis", &cluster.redis), ("nats", &cluster.nats)];
        let named: Vec<String> =
            services.iter().filter_map(|(name, url)| url.as_ref().map(|url| format!("{name}={url}"))).collect();
        logging::info(
            "cluster mode",
            &[("node", &cluster.node_id), ("size", &cluster.size), ("services", &named.join(","))],
        );
    }
}

/// Test hooks, read from the environment only here: `SHARDGATE_TEST_FULL_DISK_FILE`
/// names a file whose existence makes log writes fail with ENOSPC (the
/// storage fault seam, `log::FullWhile`).
///
/// `SHARDGATE_TEST_RECOVERY_DELAY_MS`: a test hook that makes recovery
/// wait, so black-box tests can watch /readyz answer 503 (docs/spec.md §3).
fn recovery_delay_for_tests() -> std::time::Duration {
    let millis = std::env::var("SHARDGATE_TEST_RECOVERY_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    std::time::Duration::from_millis(millis)
}

/// Takes an exclusive lock on `DATA_DIR/lock` for the life of the process:
/// two servers appending to the same segments would corrupt them. The lock
/// goes with the returned file (and with the process, even on kill -9).
fn lock_data_dir(data_dir: &Path) -> Result<fs::File> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating --data-dir {}", data_dir.display()))?;
    let path = data_dir.join("lock");
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("--data-dir {} is in use by another shardgate process", data_dir.display());
        }
        return Err(error).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// Creates the data directory and records the shard count it is laid out
/// for. A directory written with another `--shards` is re-homed first:
/// every key moves to its owner under the new count (`rehome`), and an
/// interrupted re-homing is completed before anything else.
fn check_data_dir(data_dir: &Path, shard_count: u32, segment_bytes: u64) -> Result<()> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating --data-dir {}", data_dir.display()))?;
    if rehome::finish(data_dir).context("completing an interrupted re-homing")? {
        logging::info("completed an interrupted re-homing", &[("data_dir", &data_dir.display())]);
    }
    match segments::shards_file_read(data_dir).with_context(|| format!("reading {}/shards", data_dir.display()))? {
        Some(recorded) if recorded == shard_count => Ok(()),
        Some(recorded) => {
            logging::info("re-homing keys to a new shard count", &[("from", &recorded), ("to", &shard_count)]);
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let rehomed =
                rehome::rehome(data_dir, recorded, shard_count, segment_bytes, now_ms).with_context(|| {
                    format!("re-homing --data-dir {} from {recorded} to {shard_count} shards", data_dir.display())
                })?;
            logging::info(
                "re-homed",
                &[
                    ("from", &recorded),
                    ("to", &shard_count),
                    ("keys", &rehomed.keys),
                    ("bytes", &rehomed.bytes),
                    ("millis", &rehomed.millis),
                ],
            );
            Ok(())
        }
        None => segments::shards_file_write(data_dir, shard_count).context("recording the shard count"),
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
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
