//! Gateway mode (docs/spec.md §7), black-box against a scripted origin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::{eventually, Response, Server};
use crate::origin::{Origin, Reply};

fn gateway(origin: &Origin, extra: &[&str]) -> Server {
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str(), "--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn get(server: &Server, path: &str) -> Response {
    server.send(&format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n"))
}

fn x_cache(response: &Response) -> &str {
    response.header("x-cache").unwrap_or("none")
}

/// `count` requests at once from their own connections.
fn concurrently(server: &Server, count: usize, request: &str) -> Vec<Response> {
    let addr = server.addr;
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let request = request.to_string();
            thread::spawn(move || {
                let mut client = crate::harness::Client::connect(addr);
                client.write(request.as_bytes());
                client.response()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn miss_then_hit_with_age_and_proxy_fields() {
    let origin = Origin::start(|seen| {
        Reply::ok("max-age=60", &format!("hello {}", seen.path))
            .with("Connection", "X-Origin-Hop")
            .with("X-Origin-Hop", "1")
    });
    let server = gateway(&origin, &[]);
    let request =
        "GET /a?x=1 HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Client-Hop\r\nX-Client-Hop: 1\r\n\
                   X-Forwarded-For: 10.0.0.9\r\nX-Keep: yes\r\n\r\n";
    let first = server.send(request);
    assert_eq!((first.status, x_cache(&first), first.text().as_str()), (200, "MISS", "hello /a?x=1"));
    let second = server.send(request);
    assert_eq!((second.status, x_cache(&second), second.text().as_str()), (200, "HIT", "hello /a?x=1"));
    assert!(second.header("age").is_some_and(|a| a.parse::<u64>().is_ok()));
    assert_eq!(origin.count("/a?x=1"), 1);
    // Hop-by-hop fields dropped both ways; the proxy fields added.
    assert!(first.header("x-origin-hop").is_none() && first.header("connection").is_none());
    let seen = &origin.seen()[0];
    assert!(seen.header("x-client-hop").is_none() && seen.header("connection").is_none(), "{seen:?}");
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(seen.header("host"), Some("api.test"));
    // The client's own X-Forwarded-For is not trusted (docs/spec.md §7).
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("forwarded"), Some("for=127.0.0.1;proto=http"));
    assert_eq!(seen.header("via"), Some("1.1 shardgate"));
    // HEAD is answered from the same entry, without a body.
    let mut client = server.client();
    client.write(b"HEAD /a?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let head = client.head_response();
    assert_eq!(head.header("content-length"), Some("12"));
    assert_eq!((head.status, x_cache(&head)), (200, "HIT"));
    // The query and the host are part of the key.
    assert_eq!(x_cache(&get(&server, "/a?x=2")), "MISS");
    assert_eq!(x_cache(&server.send("GET /a?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")), "MISS");
    assert_eq!(server.metric("shardgate_gateway_responses_total", &[("x_cache", "HIT")]), 2.0);
}

#[test]
fn storage_follows_rfc_9111() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/no-store" => Reply::ok("no-store, max-age=60", "x"),
        "/private" => Reply::ok("private, max-age=60", "x"),
        "/none" => Reply::ok("", "x"),
        "/public" => Reply::ok("public, max-age=60", "x"),
        "/star" => Reply::ok("max-age=60", "x").with("Vary", "*"),
        "/expires" => Reply::ok("", "x").with("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        "/vary" => {
            Reply::ok("max-age=60", &format!("for {}", seen.header("accept").unwrap_or("-"))).with("Vary", "Accept")
        }
        _ => Reply::ok("max-age=60", "x"),
    });
    let server = gateway(&origin, &[]);
    for path in ["/no-store", "/private", "/none", "/star"] {
        get(&server, path);
        let again = get(&server, path);
        assert_eq!((x_cache(&again), origin.count(path)), ("MISS", 2), "{path} must not be stored");
    }
    get(&server, "/expires");
    assert_eq!(x_cache(&get(&server, "/expires")), "HIT", "Expires gives freshness");
    // With Authorization only `public` (or s-maxage) responses are stored.
    let authorized = |path: &str| {
        server.send(&format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Basic eA==\r\n\r\n"))
    };
    authorized("/auth");
    assert_eq!(x_cache(&authorized("/auth")), "MISS");
    authorized("/public");
    assert_eq!(x_cache(&authorized("/public")), "HIT");
    // Vary: one variant per Accept value.
    let accept = |value: &str| server.send(&format!("GET /vary HTTP/1.1\r\nHost: api.test\r\nAccept: {value}\r\n\r\n"));
    assert_eq!(accept("text/a").text(), "for text/a");
    assert_eq!(accept("text/b").text(), "for text/b");
    let (a, b) = (accept("text/a"), accept("text/b"));
    assert_eq!(
        (x_cache(&a), a.text().as_str(), x_cache(&b), b.text().as_str()),
        ("HIT", "for text/a", "HIT", "for text/b")
    );
    assert_eq!(origin.count("/vary"), 2);
}

#[test]
fn default_ttl_stores_responses_without_freshness() {
    let origin = Origin::start(|_| Reply::ok("", "x"));
    let server = gateway(&origin, &["--default-ttl", "60s"]);
    get(&server, "/d");
    assert_eq!(x_cache(&get(&server, "/d")), "HIT");
}

#[test]
fn concurrent_misses_reach_the_origin_once() {
    let origin = Origin::start(|_| Reply::ok("max-age=60", "shared").after(Duration::from_millis(300)));
    let server = gateway(&origin, &[]);
    let responses = concurrently(&server, 50, "GET /hot HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert!(responses.iter().all(|r| r.status == 200 && r.text() == "shared"));
    assert_eq!(origin.count("/hot"), 1, "one origin request for 50 concurrent misses");
    let misses = responses.iter().filter(|r| x_cache(r) == "MISS").count();
    assert!(misses >= 1 && misses + responses.iter().filter(|r| x_cache(r) == "HIT").count() == 50);
}

#[test]
fn uncacheable_answers_do_not_serialise_waiters() {
    let origin = Origin::start(|_| Reply::ok("private", "mine").after(Duration::from_millis(200)));
    let server = gateway(&origin, &[]);
    let responses = concurrently(&server, 10, "GET /private HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert!(responses.iter().all(|r| r.status == 200 && x_cache(r) == "MISS"));
    // Each request got its own origin answer (none shared a private one),
    // and after the first, the waiters went to the origin together.
    assert_eq!(origin.count("/private"), 10);
    assert!(origin.concurrency_max() >= 5, "waiters queued one by one: at most {} at once", origin.concurrency_max());
    // Later requests skip the waiting list at once (hit-for-miss).
    let later = concurrently(&server, 10, "GET /private HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert!(later.iter().all(|r| r.status == 200));
    assert_eq!(origin.count("/private"), 20);
}

#[test]
fn stale_while_revalidate_serves_at_once_and_refreshes_in_the_background() {
    let version = Arc::new(AtomicUsize::new(1));
    let seen_version = Arc::clone(&version);
    let origin = Origin::start(move |_| {
        let v = seen_version.load(Ordering::Acquire);
        Reply::ok("max-age=1, stale-while-revalidate=60", &format!("v{v}"))
            .after(Duration::from_millis(100 * (v as u64 - 1)))
    });
    let server = gateway(&origin, &[]);
    assert_eq!(get(&server, "/swr").text(), "v1");
    version.store(2, Ordering::Release);
    eventually("the entry goes stale", || {
        let response = get(&server, "/swr");
        assert_eq!(response.status, 200);
        x_cache(&response) == "STALE"
    });
    // The stale answer came at once; one background fetch refreshed it.
    eventually("the background revalidation stores v2", || get(&server, "/swr").text() == "v2");
    assert_eq!(origin.count("/swr"), 2);
}

#[test]
fn conditional_revalidation_refreshes_on_304() {
    let origin = Origin::start(|seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            Reply::status(304).with("ETag", "\"v1\"").with("Cache-Control", "max-age=60")
        } else {
            Reply::ok("max-age=1", "body").with("ETag", "\"v1\"")
        }
    });
    let server = gateway(&origin, &[]);
    get(&server, "/c");
    eventually("a revalidation", || x_cache(&get(&server, "/c")) == "REVALIDATED");
    let after = get(&server, "/c");
    assert_eq!((after.status, x_cache(&after), after.text().as_str()), (200, "HIT", "body"));
    assert_eq!(after.header("cache-control"), Some("max-age=60"), "the 304's fields replace the stored ones");
    let conditional = server.send("GET /c HTTP/1.1\r\nHost: api.test\r\nIf-None-Match: \"v1\"\r\n\r\n");
    assert_eq!((conditional.status, x_cache(&conditional)), (304, "HIT"));
}

#[test]
fn stale_if_error_on_500_timeout_and_refused_connection() {
    let failing = Arc::new(AtomicUsize::new(0));
    let mode = Arc::clone(&failing);
    let origin = Origin::start(move |_| match mode.load(Ordering::Acquire) {
        0 => Reply::ok("max-age=1, stale-if-error=600", "old"),
        1 => Reply::status(500),
        _ => Reply::ok("max-age=1", "late").after(Duration::from_millis(1500)),
    });
    let server = gateway(&origin, &["--origin-timeout", "300ms", "--breaker", "100/10s"]);
    for path in ["/e500", "/etimeout", "/erefused"] {
        assert_eq!(get(&server, path).text(), "old");
    }
    assert_eq!(get(&server, "/plain500").text(), "old");
    failing.store(1, Ordering::Release);
    eventually("stale on 500", || {
        let r = get(&server, "/e500");
        r.status == 200 && x_cache(&r) == "STALE" && r.text() == "old"
    });
    // Each entry is polled until it is stale: fresh, it is a plain HIT.
    failing.store(2, Ordering::Release);
    eventually("stale on timeout", || {
        let r = get(&server, "/etimeout");
        assert_eq!((r.status, r.text().as_str()), (200, "old"));
        x_cache(&r) == "STALE"
    });
    origin.stop();
    eventually("stale on a refused connection", || {
        let r = get(&server, "/erefused");
        assert_eq!((r.status, r.text().as_str()), (200, "old"));
        x_cache(&r) == "STALE"
    });
    // Without a stored copy the errors come through: 502 refused.
    get(&server, "/never-seen").assert_problem(502);
}

#[test]
fn origin_errors_map_to_502_and_504() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/slow" => Reply::ok("", "late").after(Duration::from_millis(1500)),
        _ => Reply::status(500),
    });
    let server = gateway(&origin, &["--origin-timeout", "300ms"]);
    get(&server, "/slow").assert_problem(504);
    let error = get(&server, "/500");
    assert_eq!((error.status, error.text().as_str()), (500, "status 500"), "an origin 5xx passes through");
    drop(origin);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start(&["--origin", &url, "--origin-connect-timeout", "200ms"]);
    get(&server, "/x").assert_problem(502);
}

#[test]
fn breaker_opens_after_n_failures_and_a_half_open_probe_closes_it() {
    let healthy = Arc::new(AtomicUsize::new(0));
    let state = Arc::clone(&healthy);
    let origin =
        Origin::start(
            move |_| {
                if state.load(Ordering::Acquire) == 1 {
                    Reply::ok("", "fine")
                } else {
                    Reply::status(503)
                }
            },
        );
    let url = origin.url();
    let server = Server::start(&["--origin", &url, "--shards", "1", "--breaker", "3/2s"]);
    for _ in 0..3 {
        assert_eq!(get(&server, "/b").status, 503);
    }
    assert_eq!(origin.count("/b"), 3);
    let open = get(&server, "/b");
    open.assert_problem(503);
    assert!(open.header("retry-after").is_some());
    assert_eq!(origin.count("/b"), 3, "an open circuit sends nothing");
    let labels = [("origin", url.as_str())];
    assert_eq!(server.metric("shardgate_origin_breaker_state", &labels), 1.0);
    assert_eq!(server.metric("shardgate_origin_breaker_opens_total", &[]), 1.0);
    healthy.store(1, Ordering::Release);
    eventually("the half-open probe closes the circuit", || get(&server, "/b").status == 200);
    assert_eq!(server.metric("shardgate_origin_breaker_state", &labels), 0.0);
    assert_eq!(get(&server, "/b").text(), "fine");
}

#[test]
fn open_circuit_serves_stale_if_error() {
    let failing = Arc::new(AtomicUsize::new(0));
    let mode = Arc::clone(&failing);
    let origin = Origin::start(move |_| {
        if mode.load(Ordering::Acquire) == 0 {
            Reply::ok("max-age=1, stale-if-error=600", "kept")
        } else {
            Reply::status(500)
        }
    });
    let url = origin.url();
    let server = Server::start(&["--origin", &url, "--shards", "1", "--breaker", "2/60s"]);
    get(&server, "/kept");
    failing.store(1, Ordering::Release);
    get(&server, "/other1");
    get(&server, "/other2");
    assert_eq!(server.metric("shardgate_origin_breaker_state", &[]), 1.0);
    let before = origin.count("/kept");
    eventually("stale under an open circuit", || {
        let r = get(&server, "/kept");
        r.status == 200 && x_cache(&r) == "STALE" && r.text() == "kept"
    });
    assert_eq!(origin.count("/kept"), before, "the open circuit kept the request from the origin");
}

#[test]
fn round_robin_skips_a_dead_origin() {
    let a = Origin::start(|_| Reply::ok("", "a"));
    let b = Origin::start(|_| Reply::ok("", "b"));
    let (url_a, url_b) = (a.url(), b.url());
    let server = Server::start(&["--origin", &url_a, "--origin", &url_b, "--shards", "1"]);
    let bodies: Vec<String> = (0..10).map(|i| get(&server, &format!("/rr{i}")).text()).collect();
    assert!(bodies.iter().any(|b| b == "a") && bodies.iter().any(|b| b == "b"), "{bodies:?}");
    let a_addr = a.addr;
    a.stop();
    drop(a);
    for i in 0..10 {
        let r = get(&server, &format!("/after{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "b"), "request {i}");
    }
    // The health check (a connect each second) brings the origin back.
    let _a = Origin::start_on(a_addr, |_| Reply::ok("", "a again"));
    eventually("the revived origin gets requests again", || {
        (0..4).any(|i| get(&server, &format!("/back{i}")).text() == "a again")
    });
}

#[test]
fn concurrent_revalidations_reach_the_origin_once() {
    let origin = Origin::start(|seen| {
        // The 304 makes the entry fresh for a minute: stragglers on a slow machine still hit.
        let reply = match seen.header("if-none-match") {
            Some(_) => Reply::status(304).with("Cache-Control", "max-age=60"),
            None => Reply::ok("max-age=1", "body"),
        };
        reply.with("ETag", "\"e\"").after(Duration::from_millis(300))
    });
    let server = gateway(&origin, &[]);
    get(&server, "/reval");
    thread::sleep(Duration::from_millis(1100));
    let responses = concurrently(&server, 30, "GET /reval HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert!(responses.iter().all(|r| r.status == 200 && r.text() == "body"));
    assert_eq!(origin.count("/reval"), 2, "one fill and one revalidation for 30 concurrent stale requests");
    assert!(responses.iter().any(|r| x_cache(r) == "REVALIDATED"));
}

#[test]
fn stored_responses_stay_within_the_cache_budget() {
    let origin = Origin::start(|_| Reply::ok("max-age=600", &"z".repeat(4096)));
    let url = origin.url();
    // 1 MiB over 1 shard: the HTTP cache gets 15/16 of it.
    let server = Server::start(&["--origin", &url, "--shards", "1", "--cache-bytes", "1MiB"]);
    for i in 0..600 {
        assert_eq!(get(&server, &format!("/big/{i}")).status, 200);
    }
    let held = server.metric("shardgate_gateway_cache_bytes", &[]);
    assert!(held > 0.0 && held <= (15 << 16) as f64, "{held} bytes held");
    assert!(server.metric("shardgate_gateway_cache_objects", &[]) < 600.0);
    assert_eq!(x_cache(&get(&server, "/big/599")), "HIT", "recent entries stay");
}

#[test]
fn unsafe_methods_invalidate_and_purge_needs_the_token() {
    let origin = Origin::start(|_| Reply::ok("max-age=60", "x"));
    let server = gateway(&origin, &["--admin-token", "s3cret"]);
    get(&server, "/inv");
    assert_eq!(x_cache(&get(&server, "/inv")), "HIT");
    let post = server.send("POST /inv HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!((post.status, x_cache(&post)), (200, "BYPASS"));
    assert_eq!(origin.seen().last().map(|s| (s.method.clone(), s.body.clone())), Some(("POST".into(), b"hi".to_vec())));
    assert_eq!(x_cache(&get(&server, "/inv")), "MISS", "the POST invalidated the entry");
    let purge = |auth: &str| server.send(&format!("PURGE /inv HTTP/1.1\r\nHost: api.test\r\n{auth}\r\n"));
    purge("").assert_problem(401);
    purge("Authorization: Bearer wrong\r\n").assert_problem(403);
    assert_eq!(purge("Authorization: Bearer s3cret\r\n").status, 200);
    purge("Authorization: Bearer s3cret\r\n").assert_problem(404);
    assert_eq!(x_cache(&get(&server, "/inv")), "MISS");
}

fn write(server: &Server, path: &str, body: &str, prefer: bool) -> Response {
    let prefer = if prefer { "Prefer: respond-async\r\n" } else { "" };
    server
        .send(&format!("PUT {path} HTTP/1.1\r\nHost: api.test\r\n{prefer}Content-Length: {}\r\n\r\n{body}", body.len()))
}

fn write_status(server: &Server, location: &str) -> String {
    get(server, location).text()
}

#[test]
fn async_writes_are_accepted_delivered_and_reported() {
    let origin = Origin::start(|seen| match seen.method.as_str() {
        "GET" => Reply::ok("max-age=600", "cached"),
        _ => Reply::ok("", "stored"),
    });
    let server = gateway(&origin, &[]);
    get(&server, "/items/1");
    assert_eq!(x_cache(&get(&server, "/items/1")), "HIT");
    let accepted = write(&server, "/items/1", "one", true);
    assert_eq!((accepted.status, x_cache(&accepted)), (202, "BYPASS"), "{}", accepted.text());
    assert_eq!(accepted.header("preference-applied"), Some("respond-async"));
    let location = accepted.header("location").expect("Location").to_string();
    assert!(location.starts_with("/_writes/"));
    eventually("delivered", || write_status(&server, &location).contains("\"status\":\"delivered\""));
    assert!(write_status(&server, &location).contains("\"origin_status\":200"));
    let seen = origin.seen();
    let delivered = seen.iter().find(|s| s.path == "/items/1" && s.method == "PUT").expect("delivered");
    assert_eq!((delivered.method.as_str(), delivered.body.as_slice()), ("PUT", &b"one"[..]));
    assert_eq!(delivered.header("idempotency-key"), Some(&location["/_writes/".len()..]));
    assert_eq!(x_cache(&get(&server, "/items/1")), "MISS", "an accepted write invalidates the path");
    // Without Prefer the write goes through synchronously.
    let direct = write(&server, "/items/2", "two", false);
    assert_eq!((direct.status, x_cache(&direct)), (200, "BYPASS"));
    get(&server, "/_writes/0-ffff").assert_problem(404);
    let trace = server.send("TRACE /items/1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    trace.assert_problem(405);
    assert!(trace.header("allow").is_some_and(|a| a.contains("PURGE")));
    get(&server, "/_writes/garbage").assert_problem(404);
}

#[test]
fn async_writes_retry_then_fail_into_the_dead_letter_segment() {
    let origin = Origin::start(|_| Reply::status(503));
    let url = origin.url();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &["--origin", &url, "--async-writes", "--write-retries", "3"], &[]);
    let location = write(&server, "/doomed", "x", false).header("location").unwrap().to_string();
    eventually("failed", || write_status(&server, &location).contains("\"status\":\"failed\""));
    assert_eq!(origin.count("/doomed"), 3);
    let status: serde_json::Value = serde_json::from_str(&write_status(&server, &location)).expect("JSON");
    assert!(status["reason"].as_str().is_some_and(|r| r.contains("3 tries") && r.contains("503")), "{status}");
    assert!(server.metric("shardgate_async_writes_retried_total", &[]) >= 2.0);
    let dead = std::fs::read_dir(data.path().join("dead-letter")).unwrap().count();
    assert_eq!(dead, 1, "the failed write is kept in a dead-letter segment");
}

#[test]
fn the_write_queue_is_bounded() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start(&["--origin", &url, "--shards", "1", "--write-queue-max", "2", "--async-writes"]);
    assert_eq!(write(&server, "/q", "1", false).status, 202);
    assert_eq!(write(&server, "/q", "2", false).status, 202);
    let refused = write(&server, "/q", "3", false);
    refused.assert_problem(503);
    assert!(refused.header("retry-after").is_some());
}

#[test]
fn queued_writes_survive_kill_9_and_are_delivered_once_in_order() {
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = placeholder.local_addr().unwrap();
    drop(placeholder);
    let url = format!("http://{origin_addr}");
    let data = tempfile::tempdir().unwrap();
    let args = ["--origin", url.as_str(), "--durability", "sync", "--async-writes", "--breaker", "1000/1s"];
    let server = Server::start_in(data.path(), &args, &[]);
    let mut locations = Vec::new();
    for i in 0..3 {
        locations.push(write(&server, "/ordered", &format!("{i}"), false).header("location").unwrap().to_string());
    }
    for i in 0..5 {
        locations.push(write(&server, &format!("/each/{i}"), "x", false).header("location").unwrap().to_string());
    }
    assert!(locations.iter().all(|l| write_status(&server, l).contains("queued")));
    server.kill9();
    let origin = Origin::start_on(origin_addr, |_| Reply::ok("", "ok"));
    let server = Server::start_in(data.path(), &args, &[]);
    eventually("every write delivered", || {
        locations.iter().all(|l| write_status(&server, l).contains("\"status\":\"delivered\""))
    });
    let ordered: Vec<Vec<u8>> = origin.seen().iter().filter(|s| s.path == "/ordered").map(|s| s.body.clone()).collect();
    assert_eq!(ordered, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()], "in order per key, each once");
    for i in 0..5 {
        assert_eq!(origin.count(&format!("/each/{i}")), 1);
    }
    // New writes after the restart get new ids.
    let next = write(&server, "/ordered", "3", false).header("location").unwrap().to_string();
    assert!(!locations.contains(&next), "{next} reused an id");
}

#[test]
fn sigterm_stops_promptly_and_queued_writes_stay_queued() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let data = tempfile::tempdir().unwrap();
    let args = ["--origin", url.as_str(), "--async-writes", "--durability", "sync", "--write-retries", "100"];
    let mut server = Server::start_in(data.path(), &args, &[]);
    let location = write(&server, "/later", "x", false).header("location").unwrap().to_string();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits while a delivery is backing off");
    assert!(status.success(), "{status:?}");
    let server = Server::start_in(data.path(), &args, &[]);
    assert!(write_status(&server, &location).contains("\"status\":\"queued\""));
}

#[test]
fn queued_writes_follow_their_key_when_the_shard_count_changes() {
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = placeholder.local_addr().unwrap();
    drop(placeholder);
    let url = format!("http://{origin_addr}");
    let data = tempfile::tempdir().unwrap();
    let with_shards = |shards: &'static str| {
        ["--origin", url.as_str(), "--durability", "sync", "--async-writes", "--shards", shards].map(str::to_string)
    };
    let args = with_shards("2");
    let server = Server::start_in(data.path(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let mut locations = Vec::new();
    for key in 0..6 {
        for i in 0..3 {
            let location = write(&server, &format!("/moved/{key}"), &format!("{i}"), false)
                .header("location")
                .unwrap()
                .to_string();
            locations.push(location);
        }
    }
    server.kill9();
    let origin = Origin::start_on(origin_addr, |_| Reply::ok("", "ok"));
    let args = with_shards("3");
    let server = Server::start_in(data.path(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    eventually("every write delivered after re-homing", || {
        locations.iter().all(|l| write_status(&server, l).contains("\"status\":\"delivered\""))
    });
    for key in 0..6 {
        let bodies: Vec<Vec<u8>> =
            origin.seen().iter().filter(|s| s.path == format!("/moved/{key}")).map(|s| s.body.clone()).collect();
        assert_eq!(bodies, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()], "key {key}: once each, in order");
    }
}

#[test]
fn http_health_checks_take_an_origin_down_and_bring_it_back() {
    use std::sync::atomic::AtomicBool;
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let sick = Origin::start(move |seen| match seen.path.as_str() {
        "/health" if flag.load(Ordering::Acquire) => Reply::status(200),
        "/health" => Reply::status(503),
        _ => Reply::ok("", "sick"),
    });
    let good = Origin::start(|seen| match seen.path.as_str() {
        "/health" => Reply::status(204),
        _ => Reply::ok("", "good"),
    });
    let (sick_url, good_url) = (sick.url(), good.url());
    let args = ["--origin", &sick_url, "--origin", &good_url, "--shards", "2"];
    let server =
        Server::start(&[&args[..], &["--origin-health-path", "/health", "--origin-health-interval", "100ms"]].concat());
    let up = |url: &str| server.metric("shardgate_origin_healthy", &[("origin", url)]);
    eventually("both probed", || sick.count("/health") >= 2 && good.count("/health") >= 2);
    assert_eq!((up(&sick_url), up(&good_url)), (1.0, 1.0));
    let probes = sick.seen().into_iter().find(|s| s.path == "/health").unwrap();
    assert_eq!(probes.header("user-agent"), Some("shardgate-health"));
    healthy.store(false, Ordering::Release);
    eventually("the failing origin taken down", || up(&sick_url) == 0.0);
    let changed = server.stderr_lines_with("origin health changed");
    assert!(changed.iter().any(|l| l.contains(&sick_url) && l.contains("state=down")), "{changed:?}");
    // Every core sends its requests to the healthy origin now.
    let before = sick.count("/x");
    for _ in 0..10 {
        assert_eq!(get(&server, "/x").text(), "good");
    }
    assert_eq!(sick.count("/x"), before, "no request went to the origin that is down");
    healthy.store(true, Ordering::Release);
    eventually("the origin back up", || up(&sick_url) == 1.0);
    assert!(server.stderr_lines_with("origin health changed").iter().any(|l| l.contains("state=up")));
    // One prober for the process, not one per core: over a stretch of
    // probes, their number is one per interval, not two.
    let (start, first) = (std::time::Instant::now(), good.count("/health"));
    eventually("ten more probes", || good.count("/health") >= first + 10);
    let probes = (good.count("/health") - first) as u128;
    let intervals = start.elapsed().as_millis() / 100;
    assert!(probes <= intervals + 2, "{probes} probes in {intervals} intervals");
    let counted = server.metric("shardgate_origin_health_checks_total", &[("origin", &good_url)]);
    assert!((counted as usize).abs_diff(good.count("/health")) <= 1, "{counted} counted");
}
