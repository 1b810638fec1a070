//! Operations: every documented metric family, `shardgate
//! check`, structured logs, the event-loop stall detector.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::harness::{get, put, skip, Server};

/// The families the contract's metrics table documents (docs/spec.md §3).
fn documented_families() -> BTreeSet<String> {
    let spec = include_str!("../../docs/spec.md");
    let table = &spec[spec.find("## 3. Service endpoints").expect("a service endpoints section")..];
    let table = &table[..table[3..].find("\n## ").map_or(table.len(), |end| end + 3)];
    table
        .lines()
        .filter_map(|line| line.strip_prefix("| `shardgate_"))
        .map(|rest| format!("shardgate_{}", rest.split(['`', '{']).next().unwrap()))
        .collect()
}

fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let body = server.send(&get("/metrics")).text();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

fn sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

#[test]
fn every_documented_family_is_exposed_with_sane_values() {
    let server = Server::start(&["--shards", "2", "--rate-limit", "1000/1s", "--rate-limit-writes", "30/10s"]);
    let mut client = server.client();
    let keyed = |request: String| request.replace("Host: t\r\n", "Host: t\r\nX-API-Key: ops\r\n");
    for i in 0..20 {
        assert!(matches!(client.request(&keyed(put(&format!("/v1/kv/m{i}"), "value"))).status, 200 | 201));
        assert_eq!(client.request(&keyed(get(&format!("/v1/kv/m{i}")))).status, 200);
        assert_eq!(client.request(&keyed(get(&format!("/v1/kv/absent{i}")))).status, 404);
    }
    for _ in 0..20 {
        client.request(&keyed(put("/v1/kv/m0", "again")));
    }
    // Writes are acknowledged before their flush (async durability); every
    // flush happens within --flush-interval. Wait until all 40 records are
    // counted, not just the first flush.
    let mut metrics = scrape(&server);
    for _ in 0..250 {
        if sum(&metrics, "shardgate_log_bytes_written_total") > 40.0 * 48.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        metrics = scrape(&server);
    }
    let exposed: BTreeSet<String> = metrics.docs.keys().cloned().collect();
    let documented = documented_families();
    assert!(documented.len() >= 25, "{documented:?}");
    let missing: Vec<_> = documented.difference(&exposed).collect();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    assert!(missing.is_empty() && undocumented.is_empty(), "missing {missing:?}, undocumented {undocumented:?}");

    // Prometheus naming: counters end in _total, histograms in _seconds.
    let body = server.send(&get("/metrics")).text();
    for line in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("{name}: unexpected type {other}"),
        }
    }

    assert_eq!(sum(&metrics, "shardgate_cache_hits_total"), 20.0);
    assert_eq!(sum(&metrics, "shardgate_cache_misses_total"), 20.0);
    assert_eq!(sum(&metrics, "shardgate_cache_evictions_total"), 0.0);
    assert_eq!(sum(&metrics, "shardgate_keys"), 20.0);
    assert!(sum(&metrics, "shardgate_log_bytes_written_total") > 40.0 * 48.0, "every put wrote a record");
    assert!(sum(&metrics, "shardgate_log_flush_duration_seconds") >= 1.0);
    assert_eq!(sum(&metrics, "shardgate_ratelimit_limited_total"), 10.0, "40 writes against 30/10s");
    assert_eq!(sum(&metrics, "shardgate_ratelimit_allowed_total"), 70.0);
    assert!(sum(&metrics, "shardgate_request_duration_seconds") >= 80.0);
    // Every counted stall is also in the histogram. A stall between the two
    // reads of one scrape can make them differ for that scrape only.
    let stalls_agree = (0..50).any(|_| {
        let metrics = scrape(&server);
        sum(&metrics, "shardgate_event_loop_stalls_total") == sum(&metrics, "shardgate_event_loop_stall_seconds")
    });
    assert!(stalls_agree, "the stall counter and the stall histogram disagree in 50 scrapes");
    assert_eq!(sum(&metrics, "shardgate_ready"), 1.0);
}

#[test]
fn check_prints_a_line_per_check() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check", "--max-connections", "100", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run shardgate check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let names = ["kernel", "io_uring", "memlock", "nofile", "somaxconn", "governor", "thp", "cpus", "fdatasync"];
    for name in names {
        let line =
            lines.iter().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or_else(|| panic!("{stdout}"));
        assert!(["PASS ", "WARN ", "FAIL "].iter().any(|s| line.starts_with(s)), "{line}");
        if !line.starts_with("PASS") {
            assert!(line.contains("; fix: "), "a problem names its fix: {line}");
        }
    }
    let fdatasync = lines.iter().find(|l| l.contains(" fdatasync ")).unwrap();
    assert!(fdatasync.contains("median") && fdatasync.contains("p99"), "{fdatasync}");
    let failed = lines.iter().any(|l| l.starts_with("FAIL"));
    assert_eq!(output.status.code(), Some(i32::from(failed)), "{stdout}");
    assert!(stdout.contains(&format!("{} checks:", names.len())), "{stdout}");
    // The scratch file is gone.
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0);
}

#[test]
fn json_logs_and_the_stall_detector() {
    let server = Server::start(&["--shards", "1", "--log-format", "json", "--max-body", "512MiB"]);
    assert_eq!(server.metric("shardgate_event_loop_stalls_total", &[]), 0.0);
    // A 256 MiB PUT is copied, hashed and encoded into the log on the event
    // loop in one go: tens of milliseconds on any machine, a real stall.
    let body = vec![b'x'; 256 << 20];
    let mut client = server.client();
    client.write(format!("PUT /v1/kv/huge HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    client.write(&body);
    assert_eq!(client.response().status, 201);
    let mut stalls = 0.0;
    for _ in 0..100 {
        stalls = server.metric("shardgate_event_loop_stalls_total", &[]);
        if stalls >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stalls >= 1.0, "the watchdog saw the stall");
    let warnings = server.stderr_lines_with("event loop stall");
    assert!(!warnings.is_empty());
    for line in server.stderr.lock().unwrap().iter() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        for field in ["ts", "level", "msg"] {
            assert!(value[field].is_string(), "{line}");
        }
    }
    let warning: serde_json::Value = serde_json::from_str(&warnings[0]).unwrap();
    assert_eq!(warning["level"], "warn");
    let blocked: u64 = warning["blocked_ms"].as_str().unwrap().parse().unwrap();
    assert!(blocked >= 10, "{warning}");
}

/// The descriptor table is grown once at start (io::runtime::fds): a table
/// that grows while a core accepts a burst stalls that core for an RCU
/// grace period. `FDSize` in /proc/PID/status is the table's size.
#[test]
fn the_descriptor_table_is_grown_for_every_connection_at_start() {
    let needed = 2 * (3000 + 64) + 64;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    if limit.rlim_max < needed {
        skip("the_descriptor_table_is_grown_for_every_connection_at_start", "the hard nofile limit is below 6,192");
        return;
    }
    let server = Server::start(&["--shards", "2", "--max-connections", "3000"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    let size: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no FDSize in {status}"));
    assert!(size >= needed, "descriptor table of {size} entries, {needed} needed");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("limits");
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{limits}"));
    assert!(soft >= needed, "soft nofile limit {soft}, {needed} needed");
}

/// `--access-log`: one JSON object per request, written off the event
/// loop, and the file reopened on SIGHUP (logrotate's `postrotate`).
#[test]
fn the_access_log_writes_a_line_per_request_and_reopens_on_sighup() {
    let origin = crate::origin::Origin::start(|_| crate::origin::Reply::ok("max-age=60", "hello"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let url = origin.url();
    let log = path.to_str().unwrap();
    let server =
        Server::start(&["--origin", &url, "--shards", "2", "--access-log", log, "--access-log-format", "json"]);
    for request in ["GET /a?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n", "GET /a?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n"] {
        assert_eq!(server.send(request).status, 200);
    }
    assert_eq!(server.send(&get("/healthz")).status, 200);
    // Every request is logged; the harness's own /readyz polls are left out here.
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all = text.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).expect("one JSON object"));
        all.filter(|line| line["target"] != "/readyz").collect()
    };
    crate::harness::eventually("three lines", || lines(&path).len() == 3);
    let written = lines(&path);
    let miss = written.iter().find(|l| l["cache"] == "MISS").expect("the miss");
    assert_eq!(
        (miss["method"].as_str(), miss["target"].as_str(), miss["status"].as_u64()),
        (Some("GET"), Some("/a?x=1"), Some(200))
    );
    assert_eq!((miss["bytes"].as_u64(), miss["client"].as_str()), (Some(5), Some("127.0.0.1")));
    assert!(
        miss["origin_us"].as_u64().is_some()
            && miss["duration_us"].as_u64().is_some()
            && miss["shard"].as_u64().is_some()
    );
    assert!(miss["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    let hit = written.iter().find(|l| l["cache"] == "HIT").expect("the hit");
    assert!(hit["origin_us"].is_null());
    assert!(written.iter().any(|l| l["target"] == "/healthz" && l["cache"].is_null()));
    // logrotate moves the file away, then signals.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    server.signal(libc::SIGHUP);
    crate::harness::eventually("the log reopened", || path.exists());
    assert_eq!(server.send("GET /b HTTP/1.1\r\nHost: api.test\r\n\r\n").status, 200);
    crate::harness::eventually("the next line in the new file", || lines(&path).len() == 1);
    assert_eq!(lines(&rotated).len(), 3, "the rotated file keeps what it had");
    assert_eq!(lines(&path)[0]["target"], "/b");
    assert_eq!(server.metric("shardgate_access_log_dropped_total", &[]), 0.0);
}
