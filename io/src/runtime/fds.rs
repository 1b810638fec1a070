//! The process's file-descriptor table, sized once at start.
//!
//! Linux grows a process's descriptor table by doubling when a new
//! descriptor does not fit, and a process with more than one thread then
//! waits for an RCU grace period (`expand_files` → `synchronize_rcu`)
//! before the new table is used. That wait happened inside an `accept` on
//! an event loop: measured here, a core accepting a burst of 4,096
//! connections sat in uninterruptible sleep for 10–120 ms at a time while
//! the table grew from 256 to 8,192 entries, and every request on that
//! core waited with it (the disk-overload bench's GET p99 went from
//! ~0.1 ms to 4–8 ms). The kernel never shrinks the table, so growing it
//! once before any core runs removes the wait: open a descriptor at the
//! highest number the server can need, then close it.

use std::io;

/// Descriptors a shard needs besides its client connections: its ring,
/// listener, eventfds, segments, hint files, the origin connections of
/// checks and probes.
pub const PER_SHARD_EXTRA: u64 = 64;
/// Descriptors the process needs besides its shards.
pub const PROCESS_EXTRA: u64 = 64;

/// How many descriptors a server with these bounds can hold at once.
pub fn needed(shard_count: u32, connections_per_shard: u64) -> u64 {
    u64::from(shard_count) * (connections_per_shard + PER_SHARD_EXTRA) + PROCESS_EXTRA
}

/// Raises the soft `RLIMIT_NOFILE` towards `needed` (up to the hard limit,
/// as Go's runtime does at start) and grows the descriptor table to hold
/// that many. Returns the table's size afterwards.
pub fn reserve(needed: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < needed && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own. Raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let size = needed.min(limit.rlim_cur);
    if size == 0 {
        return Ok(0);
    }
    // F_DUPFD returns the lowest free descriptor at or above its argument,
    // so a duplicate of stdin at `size - 1` forces the table to `size`.
    // SAFETY: fcntl and close act on descriptors this function owns.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, (size - 1) as libc::c_int) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened here and nothing else knows it.
    unsafe { libc::close(fd) };
    Ok(size)
}
