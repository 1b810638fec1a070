//! Reading a server's resource use from /proc.

use std::time::Duration;

use anyhow::{Context, Result};

/// CPU time (user + system, all threads) a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_time(&stat, clock_ticks_per_second())
}

/// Parses utime + stime (fields 14 and 15) out of a /proc/PID/stat line.
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last ')'.
pub fn parse_cpu_time(stat: &str, ticks_per_second: u64) -> Result<Duration> {
    let after_name = stat.rsplit_once(')').context("no ')' in stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11).context("short stat")?.parse()?;
    let stime: u64 = fields.get(12).context("short stat")?.parse()?;
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / ticks_per_second))
}

/// Resident set size (VmRSS) of a process now, in bytes. Sampled during a
/// phase, its maximum is the phase's peak (VmHWM would be the lifetime's).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_kib_field(&status, "VmRSS:").context("no VmRSS in status")
}

pub fn parse_kib_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (shard gate (x)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_time(stat, 100).unwrap(), Duration::from_millis(3250));
    }

    #[test]
    fn status_kib_field() {
        let status = "Name:\tshardgate\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_kib_field(status, "VmHWM:"), Some(12345 * 1024));
        assert_eq!(parse_kib_field(status, "VmSwap:"), None);
    }
}
