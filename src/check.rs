//! `shardgate check`: inspects the host the way ScyllaDB's setup checks do
//! and prints one PASS / WARN / FAIL line per check, with the fix.
//!
//! Reading /proc and /sys is done here; what the texts mean is decided by
//! pure functions (`parse_*`, `judge_*`) that are unit-tested on samples
//! captured from real machines.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use shardgate_io::runtime::driver;

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One check's verdict: what was found and, unless it passed, the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub name: &'static str,
    pub found: String,
    pub fix: Option<String>,
}

impl Finding {
    fn pass(name: &'static str, found: impl Into<String>) -> Finding {
        Finding { status: Status::Pass, name, found: found.into(), fix: None }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { status: Status::Warn, name, found: found.into(), fix: Some(fix.into()) }
    }

    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { status: Status::Fail, name, found: found.into(), fix: Some(fix.into()) }
    }

    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        match &self.fix {
            None => format!("{status} {:<10} {}", self.name, self.found),
            Some(fix) => format!("{status} {:<10} {}; fix: {fix}", self.name, self.found),
        }
    }
}

/// Runs every check for `config` on `shard_count` shards over `cpus`.
/// Returns the process exit code: 1 when any check failed.
pub fn run(config: &Config, shard_count: u32, cpus: &[usize]) -> u8 {
    // Gateway mode keeps up to --origin-pool idle connections per origin per shard.
    let origin_fds = config.gateway.as_ref().map_or(0, |g| g.origins.len() * g.pool_connections_max);
    let mut findings = vec![
        judge_kernel(&read("/proc/sys/kernel/osrelease")),
        judge_io_uring(
            read_opt("/proc/sys/kernel/io_uring_disabled").as_deref(),
            parse_seccomp(&read("/proc/self/status")),
            driver::probe_uring().map(|flags| shardgate_io::config::Driver::Uring(flags).to_string()),
        ),
        judge_memlock(rlimit(libc::RLIMIT_MEMLOCK), shard_count),
        judge_nofile(rlimit(libc::RLIMIT_NOFILE), shard_count, config.connections_max + origin_fds),
        judge_somaxconn(read_opt("/proc/sys/net/core/somaxconn").and_then(|t| t.trim().parse().ok()), config.backlog),
        judge_governor(&governors(cpus)),
        judge_thp(read_opt("/sys/kernel/mm/transparent_hugepage/enabled").as_deref()),
        judge_cpus(read_opt("/sys/devices/system/cpu/online").as_deref(), cpus, shard_count),
        judge_fdatasync(&config.data_dir, measure_fdatasync(&config.data_dir, FDATASYNC_SAMPLES)),
    ];
    if let Some(gateway) = &config.gateway {
        let reached = gateway
            .origins
            .iter()
            .map(|o| {
                let connected = std::net::TcpStream::connect_timeout(&o.address, gateway.connect_timeout);
                (o.url.clone(), connected.map(drop).map_err(|e| e.to_string()))
            })
            .collect::<Vec<_>>();
        findings.push(judge_origins(&reached));
    }
    let mut stdout = std::io::stdout().lock();
    for finding in &findings {
        let _ = writeln!(stdout, "{}", finding.line());
    }
    let worst = findings.iter().map(|f| f.status).max().unwrap_or(Status::Pass);
    let _ = writeln!(
        stdout,
        "{} checks: {} pass, {} warn, {} fail",
        findings.len(),
        findings.iter().filter(|f| f.status == Status::Pass).count(),
        findings.iter().filter(|f| f.status == Status::Warn).count(),
        findings.iter().filter(|f| f.status == Status::Fail).count()
    );
    u8::from(worst == Status::Fail)
}

fn read(path: &str) -> String {
    read_opt(path).unwrap_or_default()
}

fn read_opt(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// The soft limit of a resource (None: unlimited).
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

fn governors(cpus: &[usize]) -> Vec<(usize, Option<String>)> {
    cpus.iter()
        .map(|&cpu| {
            let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
            (cpu, read_opt(&path).map(|t| t.trim().to_string()))
        })
        .collect()
}

/// `6.1.0-18-amd64` → (6, 1).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `Seccomp:` mode of /proc/self/status: 0 none, 1 strict, 2 filter.
pub fn parse_seccomp(status: &str) -> Option<u8> {
    status.lines().find_map(|line| line.strip_prefix("Seccomp:")).and_then(|v| v.trim().parse().ok())
}

/// The selected value of a sysfs choice list: `always [madvise] never` → `madvise`.
pub fn parse_choice(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

/// A kernel CPU list, `0-3,8,10-11` → [0, 1, 2, 3, 8, 10, 11].
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if last < first || last - first > 65_536 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// DEFER_TASKRUN, the ring flag that matters (tuning.md), needs 6.1.
pub fn judge_kernel(release: &str) -> Finding {
    match parse_kernel_version(release) {
        Some(version) if version >= (6, 1) => Finding::pass("kernel", format!("Linux {}", release.trim())),
        Some(version) if version >= (5, 11) => Finding::warn(
            "kernel",
            format!("Linux {} has io_uring without DEFER_TASKRUN", release.trim()),
            "run Linux 6.1 or later: io_uring costs ~1.7x more CPU per request without DEFER_TASKRUN",
        ),
        Some(_) => Finding::warn(
            "kernel",
            format!("Linux {} is too old for monoio's io_uring driver", release.trim()),
            "run Linux 6.1 or later (epoll is used meanwhile)",
        ),
        None => Finding::warn(
            "kernel",
            format!("cannot read the kernel version {release:?}"),
            "check /proc/sys/kernel/osrelease",
        ),
    }
}

/// Whether io_uring can be used, and if not, why.
pub fn judge_io_uring(disabled: Option<&str>, seccomp: Option<u8>, probe: Result<String, String>) -> Finding {
    match probe {
        Ok(driver) => Finding::pass("io_uring", format!("allowed: {driver}")),
        Err(reason) => {
            let why = match (disabled.map(str::trim), seccomp) {
                (Some("2"), _) => "kernel.io_uring_disabled = 2".to_string(),
                (Some("1"), _) => "kernel.io_uring_disabled = 1 (only kernel.io_uring_group may use it)".to_string(),
                (_, Some(2)) => format!("{reason}; a seccomp filter is active (containers often block io_uring)"),
                _ => reason,
            };
            Finding::warn(
                "io_uring",
                format!("not available ({why}); shardgate falls back to epoll"),
                "sysctl kernel.io_uring_disabled=0; outside containers or with a seccomp profile allowing \
                 io_uring_setup/io_uring_enter/io_uring_register; raise LimitMEMLOCK",
            )
        }
    }
}

/// Rings and their buffers need locked memory on kernels that charge
/// io_uring to RLIMIT_MEMLOCK (before 5.12); 64 KiB per ring is a floor.
pub fn judge_memlock(limit: Option<u64>, shard_count: u32) -> Finding {
    let needed = 64 * 1024 * u64::from(shard_count);
    match limit {
        None => Finding::pass("memlock", "unlimited"),
        Some(bytes) if bytes >= needed => Finding::pass("memlock", format!("{} KiB", bytes / 1024)),
        Some(bytes) => Finding::warn(
            "memlock",
            format!("{} KiB locked memory for {shard_count} rings (want {} KiB)", bytes / 1024, needed / 1024),
            "LimitMEMLOCK=infinity in the unit, or ulimit -l unlimited",
        ),
    }
}

/// Every connection is a descriptor; so are listeners, segments, rings.
pub fn judge_nofile(limit: Option<u64>, shard_count: u32, connections_max: usize) -> Finding {
    let needed = shardgate_io::runtime::fds::needed(shard_count, connections_max as u64);
    match limit {
        None => Finding::pass("nofile", "unlimited"),
        Some(n) if n >= needed => Finding::pass("nofile", format!("{n} descriptors (need {needed})")),
        Some(n) => Finding::fail(
            "nofile",
            format!("{n} descriptors; {shard_count} shards x --max-connections {connections_max} need {needed}"),
            format!(
                "LimitNOFILE={} in the unit, or ulimit -n {}, or lower --max-connections",
                needed.next_power_of_two(),
                needed.next_power_of_two()
            ),
        ),
    }
}

/// Gateway mode: every `--origin` should accept a connection now. Not a
/// failure of the host, so at worst a warning: the gateway serves stale
/// copies and retries while an origin is down.
pub fn judge_origins(reached: &[(String, Result<(), String>)]) -> Finding {
    let down: Vec<String> =
        reached.iter().filter_map(|(url, result)| result.as_ref().err().map(|e| format!("{url} ({e})"))).collect();
    if down.is_empty() {
        return Finding::pass("origins", format!("{} reachable", reached.len()));
    }
    Finding::warn(
        "origins",
        format!("{} of {} unreachable: {}", down.len(), reached.len(), down.join(", ")),
        "start the origin, or check --origin and the firewall between this host and it",
    )
}

/// The kernel silently caps a listen backlog at somaxconn.
pub fn judge_somaxconn(somaxconn: Option<u64>, backlog: i32) -> Finding {
    match somaxconn {
        None => Finding::warn("somaxconn", "cannot read net.core.somaxconn", "check /proc/sys/net/core/somaxconn"),
        Some(n) if n >= backlog as u64 => Finding::pass("somaxconn", format!("{n} (--backlog {backlog})")),
        Some(n) => Finding::warn(
            "somaxconn",
            format!("{n} caps --backlog {backlog}: bursts of new connections are dropped sooner"),
            format!("sysctl -w net.core.somaxconn={backlog}"),
        ),
    }
}

/// Anything but `performance` adds wake-up latency after idle.
pub fn judge_governor(governors: &[(usize, Option<String>)]) -> Finding {
    let slow: Vec<String> = governors
        .iter()
        .filter_map(|(cpu, governor)| {
            governor.as_ref().filter(|g| *g != "performance").map(|g| format!("cpu{cpu}={g}"))
        })
        .collect();
    if governors.iter().all(|(_, g)| g.is_none()) {
        return Finding::pass("governor", "no cpufreq control exposed (virtual machine or fixed frequency)");
    }
    if slow.is_empty() {
        return Finding::pass("governor", "performance");
    }
    Finding::warn("governor", slow.join(" "), "cpupower frequency-set -g performance")
}

/// THP `always` can stall a core in compaction; `madvise` or `never` cannot.
pub fn judge_thp(enabled: Option<&str>) -> Finding {
    match enabled.and_then(parse_choice) {
        None => Finding::pass("thp", "not available"),
        Some("always") => Finding::warn(
            "thp",
            "transparent_hugepage=always (page compaction can stall an event loop)",
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        ),
        Some(mode) => Finding::pass("thp", mode.to_string()),
    }
}

/// Shards beyond the allowed CPUs share cores; fewer CPUs allowed than
/// online is fine (IRQ cores kept apart) but worth saying.
pub fn judge_cpus(online: Option<&str>, allowed: &[usize], shard_count: u32) -> Finding {
    let online = online.and_then(parse_cpu_list).map_or(0, |cpus| cpus.len());
    let found = format!("{online} online, {} in the affinity mask, {shard_count} shards", allowed.len());
    if shard_count as usize > allowed.len() {
        return Finding::warn(
            "cpus",
            found,
            "use --shards at most the CPUs in the affinity mask (taskset/CPUAffinity)",
        );
    }
    Finding::pass("cpus", found)
}

const FDATASYNC_SAMPLES: usize = 100;
/// Above this median, `--durability sync` writes wait on the disk more than
/// on everything else together.
const FDATASYNC_SLOW_US: u64 = 2_000;

/// Appends 4 KiB and fdatasyncs, `samples` times, in a scratch file inside
/// `data_dir`. Returns the sorted latencies in microseconds.
fn measure_fdatasync(data_dir: &Path, samples: usize) -> Result<Vec<u64>, String> {
    fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join(format!(".check-fdatasync-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&path)?;
        let block = [0x5au8; 4096];
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            file.write_all(&block)?;
            let started = Instant::now();
            file.sync_data()?;
            latencies.push(started.elapsed().as_micros() as u64);
        }
        latencies.sort_unstable();
        Ok::<_, std::io::Error>(latencies)
    })();
    let _ = fs::remove_file(&path);
    result.map_err(|e| format!("cannot write in {}: {e}", data_dir.display()))
}

pub fn judge_fdatasync(data_dir: &Path, latencies: Result<Vec<u64>, String>) -> Finding {
    let latencies = match latencies {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return Finding::fail("fdatasync", "no samples", "check --data-dir"),
        Err(why) => return Finding::fail("fdatasync", why, "make --data-dir writable by the service user"),
    };
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let found = format!("{}: median {median} µs, p99 {p99} µs over {} appends", data_dir.display(), latencies.len());
    if median > FDATASYNC_SLOW_US {
        return Finding::warn(
            "fdatasync",
            found,
            "put --data-dir on an SSD/NVMe with power-loss protection, or use --durability async",
        );
    }
    Finding::pass("fdatasync", found)
}

#[cfg(test)]
mod tests;
