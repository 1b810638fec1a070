//! Backpressure (docs/spec.md §5 and §7): the origin's concurrency limit,
//! its fair queue with a deadline, the retry budget, and the disk's bounds.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{eventually, Client, Response, Server};
use crate::origin::{Origin, Reply};

fn gateway(origin: &Origin, extra: &[&str]) -> Server {
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends each request from its own connection, all at once; returns each
/// response with how long it took.
fn at_once(server: &Server, requests: Vec<String>) -> Vec<(Response, Duration)> {
    let addr = server.addr;
    let handles: Vec<_> = requests
        .into_iter()
        .map(|request| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let started = Instant::now();
                client.write(request.as_bytes());
                let response = client.response();
                (response, started.elapsed())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn get(path: &str, api_key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nX-API-Key: {api_key}\r\n\r\n")
}

fn assert_overloaded(response: &Response) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
}

fn rejected(server: &Server, reason: &str) -> f64 {
    let metrics = server.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("shardgate_origin_rejected_total{") && line.contains(&format!("reason=\"{reason}\""))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn the_origin_never_sees_more_than_its_limit_and_every_request_is_answered() {
    const ORIGIN_TIME: Duration = Duration::from_millis(300);
    let origin = Origin::start(|_| Reply::ok("max-age=60", "fetched").after(ORIGIN_TIME));
    let server = gateway(&origin, &["--shards", "2", "--origin-max-connections", "8", "--origin-queue-timeout", "1s"]);
    // 64 clients, each missing a key of its own.
    let requests = (0..64).map(|i| get(&format!("/item/{i}"), &format!("client-{i}"))).collect();
    let answers = at_once(&server, requests);
    assert!(origin.concurrency_max() <= 8, "the origin saw {} at once", origin.concurrency_max());
    let served = answers.iter().filter(|(r, _)| r.status == 200).count();
    for (response, took) in &answers {
        assert!(matches!(response.status, 200 | 503), "{}", response.status);
        if response.status == 503 {
            assert_overloaded(response);
        }
        // Bounded by the queue timeout plus one origin time; the margin
        // is for a loaded test machine, not a speed claim.
        assert!(*took < Duration::from_secs(1) + ORIGIN_TIME + Duration::from_secs(3), "took {took:?}");
    }
    assert!(served >= 8, "only {served} served");
    assert!(served < 64, "1 s of queue cannot serve 64 × 300 ms through 8 slots");
    let refused = rejected(&server, "queue_timeout") + rejected(&server, "queue_standing");
    assert_eq!(refused as usize, 64 - served);
    let metrics = server.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    assert!(metrics.lines().any(|l| l.starts_with("shardgate_origin_limit{") && l.ends_with(" 8")), "{metrics}");
    assert!(server.stderr_lines_with("origin limit rejecting").len() == 1, "one log line for the episode");
}

#[test]
fn a_stale_copy_beats_the_503_and_hits_pass_a_full_queue() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/slow" => Reply::ok("no-store", "slow").after(Duration::from_secs(2)),
        "/fresh" => Reply::ok("max-age=600", "fresh"),
        _ => Reply::ok("max-age=1, stale-if-error=600", "kept"),
    });
    let args = ["--shards", "1", "--origin-max-connections", "1", "--origin-queue-timeout", "200ms"];
    let server = gateway(&origin, &args);
    assert_eq!(server.send(&get("/fresh", "a")).status, 200);
    assert_eq!(server.send(&get("/kept", "a")).text(), "kept");
    // Let max-age=1 pass without a request (one would revalidate it).
    thread::sleep(Duration::from_millis(1200));
    // One slow request holds the only slot.
    let addr = server.addr;
    let holder = thread::spawn(move || {
        let mut client = Client::connect(addr);
        client.request(&get("/slow", "holder"))
    });
    eventually("the slot is taken", || origin.count("/slow") == 1);
    // Its revalidation finds no slot: the copy stale-if-error allows is
    // served at once, without queueing (counted as `stale_served`, not as
    // a queue timeout).
    let stale = server.send(&get("/kept", "b"));
    assert_eq!((stale.status, stale.text().as_str()), (200, "kept"));
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    let missing = server.send(&get("/never-stored", "b"));
    assert_overloaded(&missing);
    // A hit needs no slot: answered while the slot is still held.
    let hit = server.send(&get("/fresh", "c"));
    assert_eq!((hit.status, hit.header("x-cache")), (200, Some("HIT")));
    assert!(!holder.is_finished(), "the hit was answered while the only slot was taken");
    assert_eq!(holder.join().unwrap().status, 200);
    assert_eq!(rejected(&server, "stale_served"), 1.0);
    assert_eq!(rejected(&server, "queue_timeout"), 1.0, "the request with nothing stored waited, then 503");
}

#[test]
fn one_identity_cannot_take_more_than_its_share_of_the_queue() {
    let origin = Origin::start(|_| Reply::ok("no-store", "done").after(Duration::from_millis(600)));
    // One shard, 8 places: one identity may hold 2 of them.
    let args =
        ["--shards", "1", "--origin-max-connections", "1", "--origin-queue", "8", "--origin-queue-timeout", "5s"];
    let server = gateway(&origin, &args);
    let mut requests: Vec<String> = (0..7).map(|i| get(&format!("/heavy/{i}"), "heavy")).collect();
    requests.extend((0..3).map(|i| get(&format!("/light/{i}"), &format!("light-{i}"))));
    let answers = at_once(&server, requests);
    let heavy_refused = answers[..7].iter().filter(|(r, _)| r.status == 503).count();
    // The heavy client has at most one in flight and two queued.
    assert!(heavy_refused >= 4, "the heavy client was refused {heavy_refused} times");
    for (response, _) in &answers[7..] {
        assert_eq!(response.status, 200, "a light client was refused: {}", response.text());
    }
    assert_eq!(rejected(&server, "queue_share") as usize, heavy_refused);
}

#[test]
fn the_retry_budget_stops_redeliveries_when_the_origin_fails_everything() {
    let origin = Origin::start(|_| Reply::status(500));
    let args = ["--shards", "1", "--async-writes", "--write-retries", "100", "--retry-budget", "20%"];
    let server = gateway(&origin, &args);
    for i in 0..10 {
        let put = format!("PUT /w/{i} HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(server.send(&put).status, 202);
    }
    let refused = || {
        let metrics = server.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
        metrics
            .lines()
            .filter(|l| l.starts_with("shardgate_origin_retries_total{") && l.contains("outcome=\"refused\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    eventually("the budget refuses retries", || refused() >= 5.0);
    // Ten first attempts; 20% of ten is two, the floor is three per 10 s
    // window: without a budget each write would have been retried about
    // five times by now (backoff from 100 ms).
    let sent = origin.seen().len();
    assert!(sent <= 10 + 3 + 3, "the origin saw {sent} requests for 10 writes");
}

#[test]
fn a_stalled_disk_turns_sync_writes_and_cold_reads_away_and_hits_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let env = [("SHARDGATE_TEST_STALL_DISK_FILE", stall.to_str().unwrap())];
    let args = ["--shards", "1", "--durability", "sync", "--disk-queue-timeout", "200ms", "--cache-bytes", "64KiB"];
    let server = Server::start_in(&data, &args, &env);
    let put = |key: &str, value: &str| {
        format!("PUT /v1/kv/{key} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{value}", value.len())
    };
    // 256 KiB of values through a 64 KiB cache: the first are evicted.
    let value = "v".repeat(1024);
    for i in 0..256 {
        assert_eq!(server.send(&put(&format!("k{i}"), &value)).status, 201);
    }
    assert_eq!(server.send(&put("hot", "h")).status, 201);
    std::fs::write(&stall, b"").unwrap();
    // A sync write now waits for an fdatasync that does not finish.
    let segments_bytes = || -> u64 {
        let dir = std::fs::read_dir(data.join("shard-000")).unwrap();
        dir.map(|entry| entry.unwrap().metadata().unwrap().len()).sum()
    };
    let before = segments_bytes();
    let addr = server.addr;
    let waiting = thread::spawn(move || Client::connect(addr).request(&put("waits", "w")));
    eventually("the write reaches the stalled fdatasync", || segments_bytes() > before);
    // The deadline is a time: let it pass.
    thread::sleep(Duration::from_millis(300));
    let refused = server.send(&put("refused", "r"));
    assert_overloaded(&refused);
    let cold = server.send("GET /v1/kv/k0 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_overloaded(&cold);
    let hot = server.send("GET /v1/kv/hot HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((hot.status, hot.text().as_str()), (200, "h"), "a hit never waits for the disk");
    std::fs::remove_file(&stall).unwrap();
    assert_eq!(waiting.join().unwrap().status, 201, "the accepted write is answered once durable");
    assert_eq!(server.send("GET /v1/kv/k0 HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    assert_eq!(server.send("GET /v1/kv/refused HTTP/1.1\r\nHost: t\r\n\r\n").status, 404, "nothing was logged");
    let metrics = server.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    for reason in ["sync_timeout", "read_timeout"] {
        let line = format!("shardgate_disk_rejected_total{{shard=\"0\",reason=\"{reason}\"}} ");
        let count: f64 = metrics.lines().find_map(|l| l.strip_prefix(&line)).unwrap().parse().unwrap();
        assert!(count >= 1.0, "{reason}: {count}");
    }
    // Durable after a restart.
    drop(server);
    let server = Server::start_in(&data, &args, &[]);
    assert_eq!(server.send("GET /v1/kv/waits HTTP/1.1\r\nHost: t\r\n\r\n").text(), "w");
}
