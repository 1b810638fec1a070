//! Choosing the event-loop driver: io_uring when the kernel allows it, with
//! the ring flags that pay, else epoll.
//!
//! Without `DEFER_TASKRUN` the kernel runs completion work as data arrives,
//! interrupting the loop (tuning.md, "Locked memory and io_uring"); so the
//! probe asks for the best flags the kernel has, in that order, and never
//! runs a plain ring when a flagged one works.

use std::io;

use crate::config::{Driver, DriverChoice, RingFlags};

/// Submission-queue entries per core ring.
pub const RING_ENTRIES: u32 = 1024;

/// Returns the io_uring builder for `flags`.
pub fn uring_builder(flags: RingFlags) -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    match flags {
        RingFlags::DeferTaskrun => {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        RingFlags::CoopTaskrun => {
            builder.setup_coop_taskrun();
        }
        RingFlags::Plain => {}
    }
    builder
}

/// Resolves the operator's choice to a driver. Returns the driver and, when
/// `auto` fell back to epoll, the one warning line to print. An explicit
/// `uring` that cannot work is an error.
pub fn resolve(choice: DriverChoice) -> Result<(Driver, Option<String>), String> {
    match choice {
        DriverChoice::Epoll => Ok((Driver::Epoll, None)),
        DriverChoice::Uring => probe_uring().map(|flags| (Driver::Uring(flags), None)),
        DriverChoice::Auto => match probe_uring() {
            Ok(flags) => Ok((Driver::Uring(flags), None)),
            Err(reason) => Ok((Driver::Epoll, Some(format!("io_uring unavailable ({reason}); using epoll")))),
        },
    }
}

/// Creates and drops one ring per flag set, best first, and checks that the
/// kernel has every operation monoio uses. Returns why not, in words.
pub fn probe_uring() -> Result<RingFlags, String> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if text.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2".to_string());
        }
    }
    let mut last_error = None;
    for flags in [RingFlags::DeferTaskrun, RingFlags::CoopTaskrun, RingFlags::Plain] {
        match uring_builder(flags).build(RING_ENTRIES) {
            Ok(ring) => return check_opcodes(&ring).map(|()| flags),
            // EINVAL: this kernel does not know the flags; try the next set.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_error = Some(e),
            Err(e) => return Err(describe(&e)),
        }
    }
    Err(describe(&last_error.expect("at least one attempt")))
}

fn check_opcodes(ring: &io_uring::IoUring) -> Result<(), String> {
    use io_uring::opcode::*;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("probe failed: {}", describe(&e)))?;
    let needed = [
        ("accept", Accept::CODE),
        ("async_cancel", AsyncCancel::CODE),
        ("close", Close::CODE),
        ("connect", Connect::CODE),
        ("fsync", Fsync::CODE),
        ("openat", OpenAt::CODE),
        ("poll_add", PollAdd::CODE),
        ("read", Read::CODE),
        ("recv", Recv::CODE),
        ("send", Send::CODE),
        ("timeout", Timeout::CODE),
        ("write", Write::CODE),
        ("writev", Writev::CODE),
    ];
    match needed.iter().find(|(_, code)| !probe.is_supported(*code)) {
        Some((name, _)) => Err(format!("kernel lacks io_uring op {name}")),
        None => Ok(()),
    }
}

fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "io_uring_setup: EPERM, blocked by seccomp or kernel.io_uring_disabled".to_string(),
        Some(libc::ENOSYS) => "io_uring_setup: ENOSYS, kernel built without io_uring".to_string(),
        Some(libc::ENOMEM) => format!("io_uring_setup: ENOMEM, locked-memory limit too low ({})", memlock_text()),
        _ => format!("io_uring_setup: {error}"),
    }
}

fn memlock_text() -> String {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if !ok {
        return "RLIMIT_MEMLOCK unknown".to_string();
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return "RLIMIT_MEMLOCK unlimited".to_string();
    }
    format!("RLIMIT_MEMLOCK {} KiB; raise it with LimitMEMLOCK= or ulimit -l", limit.rlim_cur / 1024)
}
