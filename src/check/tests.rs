use std::path::Path;

use super::*;

// Samples captured from real machines.
const STATUS_DOCKER: &str =
    "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
const STATUS_HOST: &str = "Name:\tcat\nState:\tR (running)\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";
const THP_ALWAYS: &str = "[always] madvise never\n";
const THP_MADVISE: &str = "always [madvise] never\n";

#[test]
fn kernel_versions() {
    assert_eq!(parse_kernel_version("6.1.0-18-amd64\n"), Some((6, 1)));
    assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
    assert_eq!(parse_kernel_version("6.18.3"), Some((6, 18)));
    assert_eq!(parse_kernel_version("garbage"), None);
    assert_eq!(judge_kernel("6.1.0-18-amd64").status, Status::Pass);
    assert_eq!(judge_kernel("5.15.0-91-generic").status, Status::Warn);
    assert_eq!(judge_kernel("4.19.0").status, Status::Warn);
}

#[test]
fn seccomp_and_io_uring() {
    assert_eq!(parse_seccomp(STATUS_DOCKER), Some(2));
    assert_eq!(parse_seccomp(STATUS_HOST), Some(0));
    assert_eq!(parse_seccomp(""), None);
    let ok = judge_io_uring(Some("0\n"), Some(0), Ok("io_uring (single_issuer+defer_taskrun)".into()));
    assert_eq!(ok.status, Status::Pass);
    let disabled = judge_io_uring(Some("2\n"), Some(0), Err("io_uring_setup: EPERM".into()));
    assert_eq!(disabled.status, Status::Warn);
    assert!(disabled.found.contains("io_uring_disabled = 2"), "{}", disabled.found);
    let docker = judge_io_uring(Some("0\n"), Some(2), Err("io_uring_setup: Operation not permitted".into()));
    assert!(docker.found.contains("seccomp"), "{}", docker.found);
    assert!(docker.line().starts_with("WARN io_uring"), "{}", docker.line());
}

#[test]
fn limits() {
    assert_eq!(judge_memlock(None, 8).status, Status::Pass);
    assert_eq!(judge_memlock(Some(8 << 20), 8).status, Status::Pass);
    assert_eq!(judge_memlock(Some(64 << 10), 8).status, Status::Warn);
    assert_eq!(judge_nofile(Some(1 << 20), 8, 10_000).status, Status::Pass);
    let low = judge_nofile(Some(1024), 2, 10_000);
    assert_eq!(low.status, Status::Fail);
    assert!(low.fix.as_deref().unwrap().contains("LimitNOFILE=32768"), "{low:?}");
    assert_eq!(judge_somaxconn(Some(4096), 4096).status, Status::Pass);
    let reached = [("http://a:1".to_string(), Ok(())), ("http://b:2".to_string(), Err("refused".to_string()))];
    assert_eq!(judge_origins(&reached[..1]).status, Status::Pass);
    let down = judge_origins(&reached);
    assert_eq!(down.status, Status::Warn);
    assert!(down.found.contains("1 of 2 unreachable: http://b:2 (refused)"), "{down:?}");
    assert_eq!(judge_somaxconn(Some(128), 4096).status, Status::Warn);
    assert_eq!(judge_somaxconn(None, 4096).status, Status::Warn);
}

#[test]
fn governors_thp_cpus() {
    assert_eq!(judge_governor(&[(0, None), (1, None)]).status, Status::Pass);
    assert_eq!(judge_governor(&[(0, Some("performance".into()))]).status, Status::Pass);
    let slow = judge_governor(&[(0, Some("performance".into())), (1, Some("powersave".into()))]);
    assert_eq!((slow.status, slow.found.as_str()), (Status::Warn, "cpu1=powersave"));
    assert_eq!(parse_choice(THP_ALWAYS), Some("always"));
    assert_eq!(parse_choice(THP_MADVISE), Some("madvise"));
    assert_eq!(parse_choice("never"), None);
    assert_eq!(judge_thp(Some(THP_ALWAYS)).status, Status::Warn);
    assert_eq!(judge_thp(Some(THP_MADVISE)).status, Status::Pass);
    assert_eq!(judge_thp(None).status, Status::Pass);
    assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
    assert_eq!(parse_cpu_list("0"), Some(vec![0]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("x"), None);
    assert_eq!(judge_cpus(Some("0-7"), &[2, 3, 4, 5], 4).status, Status::Pass);
    assert_eq!(judge_cpus(Some("0-1"), &[0, 1], 4).status, Status::Warn);
}

#[test]
fn fdatasync_figures() {
    let dir = Path::new("/data");
    let fast: Vec<u64> = (100..200).collect();
    let pass = judge_fdatasync(dir, Ok(fast));
    assert_eq!(pass.status, Status::Pass);
    assert_eq!(pass.found, "/data: median 150 µs, p99 199 µs over 100 appends");
    assert_eq!(judge_fdatasync(dir, Ok(vec![5_000; 10])).status, Status::Warn);
    assert_eq!(judge_fdatasync(dir, Err("cannot write".into())).status, Status::Fail);
}
