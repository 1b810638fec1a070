//! Per-client rate limiting (docs/spec.md §4), across cores.

use std::time::{Duration, Instant};

use crate::harness::{connection_per_core, get, put, Client, Response, Server};

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

fn get_as(path: &str, api_key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {api_key}\r\n\r\n")
}

fn assert_limited(response: &Response, window_s: u64) {
    response.assert_problem(429);
    assert!(response.text().contains(QUOTA_EXCEEDED), "{}", response.text());
    let retry: u64 = response.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=window_s + 1).contains(&retry), "Retry-After {retry}");
    let rate = response.header("ratelimit").expect("RateLimit");
    // On a refusal the reset time is the retry time.
    assert_eq!(rate, format!("\"default\";r=0;t={retry}"));
}

#[test]
fn fields_429_and_exemptions_across_cores() {
    let server = Server::start(&["--shards", "2", "--rate-limit", "5/10s"]);
    let mut clients = connection_per_core(&server, 2);
    // Five requests alternating between the cores: one owns the identity,
    // the other spends leases; the count is one count.
    for i in 0..5 {
        let response = clients[i % 2].request(&get_as("/v1/kv/x", "alpha"));
        assert_eq!(response.status, 404, "{}", response.text());
        assert_eq!(response.header("ratelimit-policy"), Some("\"default\";q=5;w=10"));
        let rate = response.header("ratelimit").expect("RateLimit");
        assert!(rate.starts_with(&format!("\"default\";r={};t=", 4 - i)), "request {i}: {rate}");
    }
    for client in &mut clients {
        assert_limited(&client.request(&get_as("/v1/kv/x", "alpha")), 10);
    }
    // Another key, and clients identified by address, are not affected.
    for client in &mut clients {
        assert_eq!(client.request(&get_as("/v1/kv/x", "beta")).status, 404);
        assert_eq!(client.request(&get("/v1/kv/x")).status, 404);
    }
    // Unknown paths are limited too; service endpoints never are.
    assert_limited(&clients[0].request(&get_as("/nowhere", "alpha")), 10);
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..10 {
            let response = clients[1].request(&get_as(path, "alpha"));
            assert_eq!(response.status, 200, "{path}");
            assert_eq!(response.header("ratelimit"), None, "{path}");
        }
    }
    let limited: f64 =
        (0..2).map(|s| server.metric("shardgate_ratelimit_limited_total", &[("shard", &s.to_string())])).sum();
    assert_eq!(limited, 3.0);
}

#[test]
fn write_limit_and_per_key_overrides() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("shardgate.toml");
    std::fs::write(
        &config,
        "[rate_limit]\nlimit = \"100/10s\"\nwrites = \"2/10s\"\n[rate_limit.keys]\nvip = \"off\"\ntiny = \"1/10s\"\n",
    )
    .expect("write config");
    let server = Server::start(&["--shards", "2", "--config", config.to_str().unwrap()]);
    let mut client = server.client();
    let put_as = |key: &str| put("/v1/kv/w", "v").replace("Host: t\r\n", &format!("Host: t\r\nX-API-Key: {key}\r\n"));
    for _ in 0..2 {
        let response = client.request(&put_as("writer"));
        assert!(matches!(response.status, 200 | 201), "{}", response.text());
        let policy = response.header("ratelimit-policy").expect("RateLimit-Policy");
        assert_eq!(policy, "\"default\";q=100;w=10, \"writes\";q=2;w=10");
    }
    let refused = client.request(&put_as("writer"));
    refused.assert_problem(429);
    // Reads of the same client still pass: the write limit is separate.
    assert_eq!(client.request(&get_as("/v1/kv/w", "writer")).status, 200);
    // A key with its own limit, and one exempt from the default.
    assert_eq!(client.request(&get_as("/v1/kv/w", "tiny")).status, 200);
    assert_eq!(client.request(&get_as("/v1/kv/w", "tiny")).status, 429);
    for _ in 0..150 {
        let response = client.request(&get_as("/v1/kv/w", "vip"));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("ratelimit"), None);
    }
}

#[test]
fn one_key_over_eight_connections_gets_its_limit_across_cores() {
    const LIMIT: f64 = 100.0;
    const SECONDS: f64 = 3.0;
    let server = Server::start(&["--shards", "2", "--rate-limit", "100/1s"]);
    // Four connections on each core, each sending 25 requests/s: 2x the limit.
    let clients: Vec<Client> = (0..4).flat_map(|_| connection_per_core(&server, 2)).collect();
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let (mut accepted, mut limited, mut cold_checks, mut cold_ok) = (0u32, 0u32, 0u32, 0u32);
                let begin = Instant::now();
                let mut next = begin;
                while begin.elapsed() < Duration::from_secs_f64(SECONDS) {
                    let response = client.request(&get_as("/v1/kv/k", "hot"));
                    match response.status {
                        404 => accepted += 1,
                        429 => {
                            assert_limited(&response, 1);
                            limited += 1;
                        }
                        other => panic!("unexpected {other}: {}", response.text()),
                    }
                    // A light client on the same connections is never limited.
                    if (accepted + limited) % 10 == 0 {
                        cold_checks += 1;
                        cold_ok += u32::from(client.request(&get_as("/v1/kv/k", "cold")).status == 404);
                    }
                    next += Duration::from_millis(40);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                (accepted, limited, cold_checks, cold_ok)
            })
        })
        .collect();
    let results: Vec<(u32, u32, u32, u32)> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let accepted: u32 = results.iter().map(|r| r.0).sum();
    let limited: u32 = results.iter().map(|r| r.1).sum();
    let cold_checks: u32 = results.iter().map(|r| r.2).sum();
    let cold_ok: u32 = results.iter().map(|r| r.3).sum();
    // A sliding window admits the limit per window: over the run, the
    // limit times its length, or everything sent if a slow machine could
    // not offer that much. This checks the limiter's accuracy, not speed:
    // the run's length is measured, so noise only stretches it.
    let expected = (LIMIT * elapsed).min(f64::from(accepted + limited));
    let error = (f64::from(accepted) - expected).abs() / expected;
    assert!(error <= 0.10, "accepted {accepted} in {elapsed:.2} s, expected {expected:.0} ({:.1}% off)", error * 100.0);
    assert!(limited > 0, "2x the limit must meet 429s");
    assert_eq!(cold_ok, cold_checks, "the cold key must never be limited");
    let leases: f64 =
        (0..2).map(|s| server.metric("shardgate_ratelimit_leases_granted_total", &[("shard", &s.to_string())])).sum();
    assert!(leases > 0.0, "the other core must have spent leases");
    eprintln!("accepted {accepted} limited {limited} in {elapsed:.2} s; {leases} leases");
}

#[test]
fn forwarded_for_is_trusted_only_when_asked() {
    let from =
        |address: &str| format!("GET /v1/kv/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.9.9, {address}\r\n\r\n");
    let trusting = Server::start(&["--rate-limit", "2/10s", "--trust-forwarded-for"]);
    let mut client = trusting.client();
    for _ in 0..2 {
        assert_eq!(client.request(&from("192.0.2.1")).status, 404);
    }
    assert_eq!(client.request(&from("192.0.2.1")).status, 429);
    // Another address behind the same balancer connection is its own client.
    assert_eq!(client.request(&from("192.0.2.2")).status, 404);

    // Untrusted, the header is ignored: every request is 127.0.0.1's.
    let plain = Server::start(&["--rate-limit", "2/10s"]);
    let mut client = plain.client();
    assert_eq!(client.request(&from("192.0.2.1")).status, 404);
    assert_eq!(client.request(&from("192.0.2.2")).status, 404);
    assert_eq!(client.request(&from("192.0.2.3")).status, 429);
}

#[test]
fn a_flood_of_identities_stays_within_the_state_budget() {
    let server = Server::start(&["--shards", "2", "--rate-limit", "10/1s", "--rate-limit-state-bytes", "64KiB"]);
    let capacity = (64 * 1024 / 2) / shardgate_shards::ratelimit::SLOT_BYTES;
    let mut client = server.client();
    // 5,000 distinct API keys, pipelined 100 at a time.
    for batch in 0..50 {
        let requests: String = (0..100).map(|i| get_as("/v1/kv/x", &format!("flood-{batch}-{i}"))).collect();
        client.write(requests.as_bytes());
        for _ in 0..100 {
            assert_eq!(client.response().status, 404, "a new identity always has room");
        }
    }
    // After the flood, a client is still limited as usual.
    for _ in 0..10 {
        assert_eq!(client.request(&get_as("/v1/kv/x", "regular")).status, 404);
    }
    assert_eq!(client.request(&get_as("/v1/kv/x", "regular")).status, 429);
    // The ticker publishes the gauges every 250 ms: wait for the flood's.
    let sum = |name: &str| -> f64 { (0..2).map(|s| server.metric(name, &[("shard", &s.to_string())])).sum() };
    let expected_evictions = 5000.0 - 2.0 * capacity as f64;
    for _ in 0..40 {
        if sum("shardgate_ratelimit_evicted_total") >= expected_evictions {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tracked = sum("shardgate_ratelimit_identities");
    assert!(tracked > 0.0 && tracked <= 2.0 * capacity as f64, "tracked {tracked}, capacity {capacity} per shard");
    let evicted = sum("shardgate_ratelimit_evicted_total");
    assert!(evicted >= expected_evictions, "evicted {evicted}");
}
