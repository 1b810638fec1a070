//! docs/spec.md §5: limits, timeouts and bad input.

use std::time::{Duration, Instant};

use crate::harness::{get, Client, Server};

#[test]
fn unknown_path_and_wrong_method() {
    let server = Server::start(&["--shards", "1"]);
    server.send(&get("/nope")).assert_problem(404);
    let response = server.send("POST /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    response.assert_problem(405);
    assert_eq!(response.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    assert!(response.header("x-shard").is_some());
    let response = server.send("DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    response.assert_problem(405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
}

#[test]
fn size_limits() {
    let server = Server::start(&["--shards", "1", "--max-body", "1KiB", "--max-header", "2KiB"]);
    let body = "b".repeat(1025);
    let mut c = server.client();
    let response = c.request(&format!("PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n{body}"));
    response.assert_problem(413);
    assert!(c.is_closed());
    let fits = "b".repeat(1024);
    assert_eq!(
        server.send(&format!("PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n{fits}")).status,
        201
    );
    // Chunked bodies are bounded by their total, not per chunk.
    let chunks =
        "200\r\n".to_string() + &"c".repeat(512) + "\r\n" + "200\r\n" + &"c".repeat(512) + "\r\n1\r\nc\r\n0\r\n\r\n";
    server
        .send(&format!("PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"))
        .assert_problem(413);
    let big_header = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "h".repeat(2100));
    server.send(&big_header).assert_problem(431);
    let long_line = format!("GET /v1/kv/{} HTTP/1.1\r\nHost: t\r\n\r\n", "k".repeat(2100));
    server.send(&long_line).assert_problem(414);
    let many: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
    server.send(&format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n")).assert_problem(431);
}

#[test]
fn slow_header_gets_408_and_close() {
    let server = Server::start(&["--shards", "1", "--header-timeout", "1s"]);
    let mut c = server.client();
    c.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    let started = Instant::now();
    let response = c.response();
    response.assert_problem(408);
    assert!(started.elapsed() >= Duration::from_millis(500), "408 came before the timeout");
    assert!(c.is_closed());
}

#[test]
fn slow_body_gets_408() {
    let server = Server::start(&["--shards", "1", "--body-timeout", "1s"]);
    let mut c = server.client();
    c.write(b"PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    c.response().assert_problem(408);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let server = Server::start(&["--shards", "1", "--idle-timeout", "1s"]);
    let mut c = server.client();
    assert_eq!(c.request(&get("/healthz")).status, 200);
    let started = Instant::now();
    assert!(c.is_closed(), "idle connection stays open");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // A fresh connection that never sends anything is idle too.
    let mut silent = server.client();
    assert!(silent.is_closed());
}

#[test]
fn connections_past_the_limit_are_refused_with_503() {
    let server = Server::start(&["--shards", "1", "--max-connections", "2"]);
    let mut first = server.client();
    let mut second = server.client();
    assert_eq!(first.request(&get("/healthz")).status, 200);
    assert_eq!(second.request(&get("/healthz")).status, 200);
    let mut third = Client::connect(server.addr);
    let refused = third.response();
    refused.assert_problem(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(third.is_closed());
    drop(first);
    // Room again once a connection closed (the close is seen asynchronously).
    let freed = (0..250).any(|_| {
        let mut again = Client::connect(server.addr);
        again.write(get("/healthz").as_bytes());
        let ok = again.response().status == 200;
        if !ok {
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    assert!(freed, "the closed connection's slot was never freed");
    assert!(server.metric("shardgate_connections_refused_total", &[]) >= 1.0);
}

#[test]
fn garbage_does_not_hurt_the_server() {
    let server = Server::start(&["--shards", "2"]);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let mut c = server.client();
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        c.write(&bytes);
        c.write(b"\r\n\r\n");
        let response = c.response();
        assert!(response.status >= 400, "{}", response.status);
    }
    assert_eq!(server.send(&get("/healthz")).status, 200);
}
