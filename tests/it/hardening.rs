//! Hostile input: each test is a regression test for one way a peer could
//! crash a core, poison the cache or read what is not theirs.

use crate::harness::{put, Server};
use crate::origin::{Origin, Reply};

fn gateway(origin: &Origin, extra: &[&str]) -> Server {
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str(), "--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A request with a `name: value` field of `bytes` bytes in its value.
fn with_field(method: &str, path: &str, name: &str, value: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: api.test\r\n{name}: {value}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn an_overlong_content_type_is_refused_before_anything_changes() {
    let server = Server::start(&["--shards", "2", "--max-header", "256KiB"]);
    let content_type = "t".repeat(70_000);
    // Keys owned by each of the two cores, so both paths are covered.
    for key in ["a", "b", "c", "d"] {
        let path = format!("/v1/kv/{key}");
        let mut client = server.client();
        client.request(&with_field("PUT", &path, "Content-Type", &content_type, "v")).assert_problem(431);
        client.request(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).assert_problem(404);
        assert_eq!(client.request(&put(&path, "fine")).status, 201, "the core still serves");
    }
}

#[test]
fn an_async_write_whose_fields_cannot_be_queued_is_refused() {
    let origin = Origin::start(|_| Reply::ok("", "done"));
    let server = gateway(&origin, &["--max-header", "256KiB"]);
    let name = format!("X-{}", "n".repeat(70_000));
    let request = format!(
        "PUT /w HTTP/1.1\r\nHost: api.test\r\nPrefer: respond-async\r\n{name}: 1\r\nContent-Length: 1\r\n\r\nx"
    );
    server.send(&request).assert_problem(431);
    assert_eq!(origin.count("/w"), 0);
    assert_eq!(server.metric("shardgate_async_writes_queued", &[]), 0.0);
}

#[test]
fn an_enormous_origin_age_is_served_not_a_crash() {
    let origin = Origin::start(|_| Reply::ok("max-age=60", "aged").with("Age", "99999999999999999999999"));
    let server = gateway(&origin, &[]);
    for _ in 0..3 {
        let response = server.send("GET /aged HTTP/1.1\r\nHost: api.test\r\n\r\n");
        assert_eq!((response.status, response.text().as_str()), (200, "aged"));
    }
}
