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

fn x_cache(response: &crate::harness::Response) -> &str {
    response.header("x-cache").unwrap_or("none")
}

/// An origin that answers every path with `{host} {path}`, cacheable.
fn echo_origin() -> Origin {
    Origin::start(|seen| {
        let host = seen.header("host").unwrap_or("-").to_string();
        Reply::ok("max-age=600", &format!("{host} {}", seen.path))
    })
}

#[test]
fn a_host_with_a_path_cannot_poison_another_url() {
    let origin = echo_origin();
    let server = gateway(&origin, &[]);
    // The attack: Host carries a path and Connection drops Host on the way
    // to the origin, while a naive key still concatenated host and target.
    let planted = "GET /p/x HTTP/1.1\r\nHost: h.example/p/a\r\nConnection: host\r\n\r\n";
    server.send(planted).assert_problem(400);
    server.send("GET /p/x HTTP/1.1\r\nHost: h.example/p/a\r\n\r\n").assert_problem(400);
    server.send("GET /p/x HTTP/1.1\r\nHost: h.example\r\nConnection: host\r\n\r\n").assert_problem(400);
    server.send("GET /p/x HTTP/1.0\r\nHost: h.example\r\nHost: other.example\r\n\r\n").assert_problem(400);
    for host in ["user@h.example", "h.example:8o", "[::1", "h example"] {
        server.send(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).assert_problem(400);
    }
    let victim = server.send("GET /p/a/p/x HTTP/1.1\r\nHost: h.example\r\n\r\n");
    assert_eq!((victim.text().as_str(), x_cache(&victim)), ("h.example /p/a/p/x", "MISS"));
    assert_eq!(origin.count("/p/x"), 0, "no refused request reached the origin");
    let literal = server.send("GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    assert_eq!(literal.text(), "[::1]:8080 /v6", "an IP literal with a port is a valid Host");
}

#[test]
fn vary_reads_every_line_of_a_field() {
    let origin = Origin::start(|seen| {
        let lines: Vec<&str> =
            seen.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("accept")).map(|(_, v)| v.as_str()).collect();
        Reply::ok("max-age=600", &lines.join(", ")).with("Vary", "Accept")
    });
    let server = gateway(&origin, &[]);
    let two_lines = "GET /v HTTP/1.1\r\nHost: api.test\r\nAccept: a\r\nAccept: b\r\n\r\n";
    assert_eq!(server.send(two_lines).text(), "a, b");
    let one_line = server.send("GET /v HTTP/1.1\r\nHost: api.test\r\nAccept: a\r\n\r\n");
    assert_eq!((one_line.text().as_str(), x_cache(&one_line)), ("a", "MISS"), "a different Accept, another variant");
    let combined = server.send("GET /v HTTP/1.1\r\nHost: api.test\r\nAccept: a, b\r\n\r\n");
    assert_eq!((combined.text().as_str(), x_cache(&combined)), ("a, b", "HIT"), "the same value in one line");
}

#[test]
fn client_forwarding_fields_never_reach_the_origin_unkeyed() {
    let origin = Origin::start(|seen| {
        let echo = ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-for", "forwarded"]
            .map(|name| format!("{name}={}", seen.header(name).unwrap_or("-")))
            .join(" ");
        Reply::ok("max-age=600", &echo)
    });
    let server = gateway(&origin, &[]);
    let planted = "GET /f HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n";
    let answer = server.send(planted).text();
    assert_eq!(
        answer,
        "x-forwarded-host=- x-forwarded-proto=- x-forwarded-for=127.0.0.1 forwarded=for=127.0.0.1;proto=http"
    );
    let trusting = gateway(&origin, &["--trust-forwarded-for"]);
    let kept = trusting.send(&planted.replace("/f", "/g")).text();
    assert!(
        kept.contains("x-forwarded-host=evil.example") && kept.contains("x-forwarded-for=6.6.6.6, 127.0.0.1"),
        "{kept}"
    );
}

#[test]
fn a_response_that_sets_a_cookie_is_never_served_to_another_client() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&calls);
    let origin = Origin::start(move |_| {
        let n = counter.fetch_add(1, Ordering::AcqRel);
        Reply::ok("public, max-age=600", &format!("for client {n}")).with("Set-Cookie", &format!("session={n}"))
    });
    let server = gateway(&origin, &[]);
    let first = server.send("GET /me HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let second = server.send("GET /me HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(first.header("set-cookie"), Some("session=0"));
    assert_eq!((second.header("set-cookie"), second.text().as_str()), (Some("session=1"), "for client 1"));
    assert_ne!(x_cache(&second), "HIT");
    assert_eq!(origin.count("/me"), 2);
}

#[test]
fn a_request_with_a_cookie_is_passed_and_its_answer_not_stored() {
    let origin =
        Origin::start(|seen| Reply::ok("max-age=600", &format!("cookie={}", seen.header("cookie").unwrap_or("-"))));
    let server = gateway(&origin, &[]);
    let anonymous = "GET /c HTTP/1.1\r\nHost: api.test\r\n\r\n";
    assert_eq!(server.send(anonymous).text(), "cookie=-");
    let with_cookie = server.send("GET /c HTTP/1.1\r\nHost: api.test\r\nCookie: id=alice\r\n\r\n");
    assert_eq!((with_cookie.text().as_str(), x_cache(&with_cookie)), ("cookie=id=alice", "BYPASS"));
    // Alice's answer was not stored; the anonymous copy still serves.
    let again = server.send(anonymous);
    assert_eq!((again.text().as_str(), x_cache(&again)), ("cookie=-", "HIT"));
    let bob = server.send("GET /private HTTP/1.1\r\nHost: api.test\r\nCookie: id=bob\r\n\r\n");
    assert_eq!(bob.text(), "cookie=id=bob");
    let after = server.send("GET /private HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!((after.text().as_str(), x_cache(&after)), ("cookie=-", "MISS"), "bob's answer never serves others");
}

#[test]
fn a_server_error_is_never_handed_to_coalesced_waiters() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&calls);
    let origin = Origin::start(move |_| {
        // The first request fails after a while, so the others wait on it.
        match counter.fetch_add(1, Ordering::AcqRel) {
            0 => Reply::status(500).with("X-Private", "for the first one").after(std::time::Duration::from_millis(300)),
            n => Reply::ok("", &format!("own answer {n}")),
        }
    });
    let server = gateway(&origin, &[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                crate::harness::Client::connect(addr).request("GET /flaky HTTP/1.1\r\nHost: api.test\r\n\r\n")
            })
        })
        .collect();
    let responses: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let errors = responses.iter().filter(|r| r.status == 500).count();
    assert_eq!(errors, 1, "only the request the 500 answered gets it");
    assert!(responses.iter().filter(|r| r.status == 200).all(|r| r.text().starts_with("own answer")));
    assert!(responses.iter().filter(|r| r.status == 200).all(|r| r.header("x-private").is_none()));
}

#[test]
fn origin_responses_are_framed_strictly() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        // Both length fields: chunked decides, and the connection is not reused.
        "/both" => Reply::raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ),
        "/signed" => Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi"),
        _ => Reply::ok("", "plain"),
    });
    let server = Server::start(&["--origin", &origin.url(), "--shards", "1"]);
    for _ in 0..3 {
        assert_eq!(server.send("GET /both HTTP/1.1\r\nHost: api.test\r\n\r\n").text(), "hi");
    }
    assert_eq!(origin.connections(), 3, "a response with both length fields never returns its connection to the pool");
    server.send("GET /signed HTTP/1.1\r\nHost: api.test\r\n\r\n").assert_problem(502);
    let before = origin.connections();
    for _ in 0..3 {
        assert_eq!(server.send("GET /plain HTTP/1.1\r\nHost: api.test\r\n\r\n").text(), "plain");
    }
    assert_eq!(origin.connections(), before + 1, "a well-framed response's connection is pooled");
}

#[test]
fn the_data_directory_and_its_files_are_the_services_alone() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let mut server = Server::start_in(&data, &["--shards", "2", "--durability", "sync"], &[]);
    assert_eq!(server.send(&put("/v1/kv/k", "v")).status, 201);
    server.signal(libc::SIGTERM);
    server.wait_exit(std::time::Duration::from_secs(5)).expect("exited");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut checked = 0;
    for entry in walk(&data) {
        let expect = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&entry), expect, "{}", entry.display());
        checked += 1;
    }
    assert!(checked >= 5, "lock, shards, two shard directories and a segment at least");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn key_value_keys_cannot_reach_the_reserved_namespace() {
    let server = Server::start(&["--shards", "2"]);
    for key in ["%00w%2F0000000000000001-0000000000000001", "%00w/x", "%00w%2fy"] {
        server.send(&put(&format!("/v1/kv/{key}"), "x")).assert_problem(400);
    }
    assert_eq!(server.metric("shardgate_keys", &[]), 0.0);
}

#[test]
fn the_admin_token_can_come_from_a_file_and_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "f1le-t0ken\n").unwrap();
    let origin = Origin::start(|_| Reply::ok("max-age=60", "x"));
    let server = gateway(&origin, &["--admin-token-file", token_file.to_str().unwrap()]);
    server.send("GET /p HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let purge = "PURGE /p HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer f1le-t0ken\r\n\r\n";
    assert_eq!(server.send(purge).status, 200);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["--origin", &origin.url(), "--admin-token", "s3cret with a space"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("--admin-token") && !stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn an_expired_value_never_brings_an_older_one_back() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shards", "1", "--segment-bytes", "1MiB", "--durability", "sync"];
    let server = Server::start_in(dir.path(), &args, &[]);
    let filler = "f".repeat(16 * 1024);
    let mut client = server.client();
    // The oldest segment: the first value, then live keys that keep it from
    // being compacted, and that roll the log into the next segment.
    assert_eq!(client.request(&put("/v1/kv/k", "old")).status, 201);
    for i in 0..70 {
        assert_eq!(client.request(&put(&format!("/v1/kv/keep{i}"), &filler)).status, 201);
    }
    // The next segment: an overwrite that expires, and keys deleted later
    // so that this segment is compacted away.
    assert_eq!(client.request(&put("/v1/kv/k?ttl=1", "new")).status, 200);
    for i in 0..64 {
        assert_eq!(client.request(&put(&format!("/v1/kv/drop{i}"), &filler)).status, 201);
    }
    crate::harness::eventually("the overwrite expires", || {
        client.request("GET /v1/kv/k HTTP/1.1\r\nHost: t\r\n\r\n").status == 404
    });
    for i in 0..64 {
        assert_eq!(client.request(&format!("DELETE /v1/kv/drop{i} HTTP/1.1\r\nHost: t\r\n\r\n")).status, 204);
    }
    crate::harness::eventually("a segment is compacted away", || {
        server.metric("shardgate_compactions_total", &[]) >= 1.0
    });
    drop(client);
    let mut server = server;
    server.signal(libc::SIGTERM);
    server.wait_exit(std::time::Duration::from_secs(10)).expect("exited");
    let server = Server::start_in(dir.path(), &args, &[]);
    server.send("GET /v1/kv/k HTTP/1.1\r\nHost: t\r\n\r\n").assert_problem(404);
    assert_eq!(server.send("GET /v1/kv/keep0 HTTP/1.1\r\nHost: t\r\n\r\n").text(), filler);
}

#[test]
fn a_corrupt_record_in_a_sealed_segment_loses_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shards", "1", "--segment-bytes", "1MiB", "--durability", "sync"];
    let mut server = Server::start_in(dir.path(), &args, &[]);
    let value = |i: usize| format!("{i:05}").repeat(16 * 1024 / 5);
    let mut client = server.client();
    for i in 0..100 {
        assert_eq!(client.request(&put(&format!("/v1/kv/k{i}"), &value(i))).status, 201);
    }
    drop(client);
    server.signal(libc::SIGTERM);
    server.wait_exit(std::time::Duration::from_secs(5)).expect("exited");
    let shard = dir.path().join("shard-000");
    let sealed = shard.join("00000000000000000000.log");
    // Without its hint file, recovery reads the sealed segment whole.
    let _ = std::fs::remove_file(shard.join("00000000000000000000.hint"));
    let mut bytes = std::fs::read(&sealed).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&sealed, &bytes).unwrap();
    let server = Server::start_in(dir.path(), &args, &[]);
    let lost: Vec<usize> = (0..100)
        .filter(|i| server.send(&format!("GET /v1/kv/k{i} HTTP/1.1\r\nHost: t\r\n\r\n")).status != 200)
        .collect();
    assert_eq!(lost.len(), 1, "one damaged record, one lost key: {lost:?}");
    assert!(!server.stderr_lines_with("corrupt records skipped").is_empty(), "the skip is logged");
    assert_eq!(std::fs::read(&sealed).unwrap().len(), bytes.len(), "a sealed segment is never cut short");
}

#[test]
fn a_write_status_is_readable_only_by_its_writer_or_the_operator() {
    let origin = Origin::start(|_| Reply::ok("", "stored"));
    let server = gateway(&origin, &["--admin-token", "op3rator"]);
    let write = |key: &str| {
        let request = format!(
            "PUT /w HTTP/1.1\r\nHost: api.test\r\nX-API-Key: {key}\r\nPrefer: respond-async\r\nContent-Length: 1\r\n\r\nx"
        );
        let accepted = server.send(&request);
        assert_eq!(accepted.status, 202);
        accepted.header("location").unwrap().to_string()
    };
    let (alice, again) = (write("alice"), write("alice"));
    let token = |location: &str| location.rsplit('-').next().unwrap().to_string();
    assert_eq!(token(&alice).len(), 24, "96 random bits in hex: {alice}");
    assert_ne!(token(&alice), token(&again), "ids are not guessable from one another");
    let status =
        |location: &str, extra: &str| server.send(&format!("GET {location} HTTP/1.1\r\nHost: api.test\r\n{extra}\r\n"));
    crate::harness::eventually("the write is delivered", || {
        status(&alice, "X-API-Key: alice\r\n").text().contains("delivered")
    });
    status(&alice, "X-API-Key: mallory\r\n").assert_problem(404);
    status(&alice, "").assert_problem(404);
    assert_eq!(status(&alice, "Authorization: Bearer op3rator\r\n").status, 200);
    status(&alice, "Authorization: Bearer wrong\r\n").assert_problem(404);
    let forged = format!("{}{}", &alice[..alice.len() - 1], if alice.ends_with('0') { "1" } else { "0" });
    status(&forged, "X-API-Key: alice\r\n").assert_problem(404);
    let without_token = alice[..alice.rfind('-').unwrap()].to_string();
    status(&without_token, "X-API-Key: alice\r\n").assert_problem(404);
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_send_timeout() {
    let server = Server::start(&["--shards", "1", "--send-timeout", "1s", "--max-body", "16MiB"]);
    let big = "b".repeat(8 << 20);
    assert_eq!(server.send(&put("/v1/kv/big", &big)).status, 201);
    // Pipelines GETs of 8 MiB and reads nothing: the kernel's buffers fill
    // and the server's write makes no progress.
    let mut slow = server.client();
    slow.write("GET /v1/kv/big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(4).as_bytes());
    crate::harness::eventually("the stalled writer is cut", || {
        server.metric("shardgate_send_timeouts_total", &[]) >= 1.0
    });
    crate::harness::eventually("its connection is gone", || server.metric("shardgate_connections_open", &[]) <= 1.0);
    // Others were served all along.
    assert_eq!(server.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
}

#[test]
fn content_types_count_against_the_memory_budget() {
    let server =
        Server::start(&["--shards", "1", "--cache-bytes", "64KiB", "--max-header", "256KiB", "--durability", "sync"]);
    let content_type = |i: usize| format!("application/x-{i}-{}", "t".repeat(8 * 1024));
    let mut client = server.client();
    for i in 0..40 {
        let response =
            client.request(&with_field("PUT", &format!("/v1/kv/k{i}"), "Content-Type", &content_type(i), "v"));
        assert_eq!(response.status, 201);
    }
    // One more write, after the others are durable (so evictable): the
    // budget is enforced at each write.
    assert_eq!(client.request(&put("/v1/kv/last", "x")).status, 201);
    // 320 KiB of content types on one-byte values: only the budget's worth stays.
    assert!(server.metric("shardgate_cache_bytes", &[]) <= 64.0 * 1024.0);
    assert!(server.metric("shardgate_cache_evictions_total", &[]) > 0.0);
    for i in 0..40 {
        let response = client.request(&format!("GET /v1/kv/k{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!((response.status, response.header("content-type")), (200, Some(content_type(i).as_str())), "k{i}");
    }
}

/// Waiters for one key's origin fetch are bounded (1,024 per flight): the
/// ones past the bound get `503` at once and are counted, never queued, and
/// the fetch still answers everyone who got a place.
#[test]
fn waiters_past_the_flight_bound_get_503_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const WAITERS_MAX: usize = 1024;
    const PAST: usize = 40;
    let total = 1 + WAITERS_MAX + PAST;
    raise_nofile(4 * total as u64 + 256);
    let release = std::sync::Arc::new(AtomicBool::new(false));
    let released = std::sync::Arc::clone(&release);
    let origin = Origin::start(move |_| {
        // The fetch is held until the test has seen every request answered
        // or waiting (bounded: 30 s).
        for _ in 0..3000 {
            if released.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Reply::ok("max-age=60", "hot")
    });
    let url = origin.url();
    let server = Server::start(&["--origin", &url, "--shards", "1", "--rate-limit", "off", "--origin-timeout", "30s"]);
    let mut clients: Vec<_> = (0..total).map(|_| crate::harness::Client::connect(server.addr)).collect();
    for client in &mut clients {
        client.write(b"GET /hot HTTP/1.1\r\nHost: api.test\r\n\r\n");
    }
    crate::harness::eventually("every request past the bound is shed", || {
        server.metric("shardgate_load_shed_total", &[]) >= PAST as f64
    });
    release.store(true, Ordering::Release);
    let statuses: Vec<u16> = clients.iter_mut().map(|client| client.response().status).collect();
    let count = |status| statuses.iter().filter(|&&s| s == status).count();
    assert_eq!((count(200), count(503)), (1 + WAITERS_MAX, PAST), "{statuses:?}");
    assert_eq!(server.metric("shardgate_load_shed_total", &[]), PAST as f64);
    assert_eq!(origin.seen().len(), 1, "one fetch for every request that got a place");
}

/// Raises this process's open-file limit (inherited by the server it
/// starts) for tests that hold many connections.
fn raise_nofile(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
