//! docs/spec.md §3: service endpoints.

use crate::harness::{get, put, Server};

#[test]
fn health_ready_and_metrics() {
    let server = Server::start(&["--shards", "2"]);
    assert_eq!(server.send(&get("/healthz")).status, 200);
    assert_eq!(server.send(&get("/readyz")).status, 200);
    let mut c = server.client();
    c.write(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.head_response().status, 200);
    for i in 0..20 {
        c.request(&put(&format!("/v1/kv/m{i}"), "value"));
        c.request(&get(&format!("/v1/kv/m{i}")));
    }
    let metrics = server.send(&get("/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for family in [
        "shardgate_requests_total",
        "shardgate_request_duration_seconds",
        "shardgate_cross_core_hops_total",
        "shardgate_channel_depth",
        "shardgate_connections_open",
        "shardgate_cache_bytes",
        "shardgate_keys",
        "shardgate_load_shed_total",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "missing {family}");
    }
    assert_eq!(server.metric("shardgate_requests_total", &[("route", "kv"), ("status", "201")]), 20.0);
    assert_eq!(server.metric("shardgate_requests_total", &[("route", "kv"), ("status", "200")]), 20.0);
    assert_eq!(server.metric("shardgate_keys", &[]), 20.0);
    assert_eq!(server.metric("shardgate_cache_bytes", &[]), 20.0 * 5.0, "values held in memory");
    assert!(server.metric("shardgate_connections_open", &[]) >= 1.0);
    let histogram_count = server.metric("shardgate_request_duration_seconds_count", &[]);
    assert!(histogram_count >= 41.0, "{histogram_count}");
}
