//! A loopback cluster (docs/spec.md §8): HAProxy in front of three nodes,
//! with Redis and NATS JetStream, every one a real process the test starts
//! on free ports. Where haproxy, redis-server or nats-server is missing
//! the test reports itself skipped (`.ci/run` installs them).
//!
//! Requests carry one `Host` whichever node they reach, as they do behind
//! a router: the cache key (and so a purge's key) includes it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{skip, Client, Response, Server};
use crate::origin::{Origin, Reply};

const HOST: &str = "api.test";

/// A service process, killed with the test.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn missing_tool() -> Option<&'static str> {
    ["haproxy", "redis-server", "nats-server"].into_iter().find(|tool| {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status();
        !found.is_ok_and(|status| status.success())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms for at most `limit`; panics naming `what`.
fn within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened within {limit:?}: {what}");
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn start_redis(port: u16) -> Service {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    within("redis listens", Duration::from_secs(10), || listening(port));
    Service(child)
}

fn start_nats(port: u16, store: &Path) -> Service {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    within("nats listens", Duration::from_secs(10), || listening(port));
    Service(child)
}

/// HAProxy as `deploy/cluster/haproxy.cfg` configures it, on `port`, in
/// front of `nodes` (named n1, n2, …).
fn start_haproxy(port: u16, nodes: &[SocketAddr], dir: &Path) -> (Service, PathBuf) {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster/haproxy.cfg"))
        .expect("deploy/cluster/haproxy.cfg");
    let socket = dir.join("haproxy.sock");
    let mut config = String::new();
    for line in shipped.lines() {
        let line = line.replace("/tmp/shardgate-haproxy.sock", socket.to_str().unwrap());
        if line.trim_start().starts_with("server ") {
            continue;
        }
        let line = line.replace("bind 127.0.0.1:8080", &format!("bind 127.0.0.1:{port}"));
        config.push_str(&line);
        config.push('\n');
    }
    for (i, node) in nodes.iter().enumerate() {
        config.push_str(&format!("    server n{} {node}\n", i + 1));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    within("haproxy listens", Duration::from_secs(10), || listening(port));
    (Service(child), socket)
}

/// One cluster at a time: six processes per test on a 2-core machine are
/// enough; two clusters at once starve HAProxy's health checks.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Cluster {
    nodes: Vec<Option<Server>>,
    router: SocketAddr,
    _haproxy: Service,
    haproxy_socket: PathBuf,
    redis: Option<Service>,
    redis_port: u16,
    nats: Option<Service>,
    nats_port: u16,
    dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Three nodes in front of `origin`, each with `extra` flags; None
    /// (reported skipped) where a service's program is missing.
    fn start(test: &str, origin: &str, extra: &[&str]) -> Option<Cluster> {
        if let Some(tool) = missing_tool() {
            skip(test, &format!("{tool} is not installed (apt-get install haproxy redis-server nats-server)"));
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let (redis_port, nats_port) = (free_port(), free_port());
        let redis = start_redis(redis_port);
        let nats = start_nats(nats_port, &dir.path().join("nats"));
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let nodes: Vec<Server> = (1..=3)
            .map(|n| {
                let node_id = format!("n{n}");
                let mut args = vec![
                    "--origin",
                    origin,
                    "--admin-token",
                    "t",
                    "--cluster-redis",
                    &redis_url,
                    "--cluster-nats",
                    &nats_url,
                    "--node-id",
                    &node_id,
                    "--cluster-size",
                    "3",
                ];
                args.extend_from_slice(extra);
                Server::start(&args)
            })
            .collect();
        for node in &nodes {
            within("the node reaches redis and nats", Duration::from_secs(30), || {
                node.metric("shardgate_cluster_up", &[("service", "redis")]) == 1.0
                    && node.metric("shardgate_cluster_up", &[("service", "nats")]) == 1.0
            });
        }
        let router_port = free_port();
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let (haproxy, haproxy_socket) = start_haproxy(router_port, &addrs, dir.path());
        let router = SocketAddr::from(([127, 0, 0, 1], router_port));
        Some(Cluster {
            nodes: nodes.into_iter().map(Some).collect(),
            router,
            _haproxy: haproxy,
            haproxy_socket,
            redis: Some(redis),
            redis_port,
            nats: Some(nats),
            nats_port,
            dir,
            _turn: turn,
        })
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("a live node")
    }

    fn router(&self) -> Client {
        Client::connect(self.router)
    }

    fn kill_node(&mut self, i: usize) {
        self.nodes[i].take().expect("a live node").kill9();
    }

    /// A command on HAProxy's admin socket; its answer.
    fn haproxy(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(&self.haproxy_socket).expect("haproxy admin socket");
        socket.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n")
}

fn async_write(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nPrefer: respond-async\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn purge(path: &str, extra: &str) -> String {
    format!("PURGE {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer t\r\n{extra}\r\n")
}

fn write_id(response: &Response) -> String {
    assert_eq!(response.status, 202, "{}", response.text());
    let location = response.header("location").expect("a Location");
    location.strip_prefix("/_writes/").expect("a write status URL").to_string()
}

/// An origin that answers GETs with a cacheable body, and counts the
/// writes it answered 2xx by `Idempotency-Key` (while `healthy`; else 503).
fn counting_origin(healthy: &Arc<AtomicBool>) -> (Origin, Arc<Mutex<HashMap<String, usize>>>) {
    let delivered = Arc::new(Mutex::new(HashMap::new()));
    let (healthy, seen) = (Arc::clone(healthy), Arc::clone(&delivered));
    let origin = Origin::start(move |request| {
        if request.method == "GET" {
            return Reply::ok("max-age=600", "stored").with("Surrogate-Key", "group-a");
        }
        if !healthy.load(Ordering::Acquire) {
            return Reply::status(503);
        }
        let key = request.header("idempotency-key").unwrap_or("none").to_string();
        *seen.lock().unwrap().entry(key).or_insert(0) += 1;
        Reply::ok("no-store", "done")
    });
    (origin, delivered)
}

#[test]
fn one_api_key_is_held_to_its_limit_across_three_nodes() {
    let origin = Origin::start(|_| Reply::ok("max-age=600", "x"));
    let extra = ["--rate-limit", "50/1s", "--shards", "2"];
    let Some(cluster) =
        Cluster::start("cluster::one_api_key_is_held_to_its_limit_across_three_nodes", &origin.url(), &extra)
    else {
        return;
    };
    // Twice the limit, evenly, for 10 s, to paths on every node.
    let mut client = cluster.router();
    let started = Instant::now();
    let (mut accepted, mut unexpected) = (0u32, Vec::new());
    for i in 0..1000u64 {
        let due = started + Duration::from_millis(10 * i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let response = client.request(&get(&format!("/r/{}", i % 300), "X-API-Key: k1\r\n"));
        match response.status {
            200 => accepted += 1,
            429 => {}
            other => unexpected.push(other),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(unexpected.is_empty(), "statuses other than 200 and 429: {unexpected:?}");
    let expected = 50.0 * seconds;
    let error = (f64::from(accepted) - expected).abs() / expected;
    assert!(error <= 0.10, "{accepted} accepted in {seconds:.1} s against a limit of 50/s: {:.1}% off", error * 100.0);
    for i in 0..3 {
        let served = cluster.node(i).metric("shardgate_requests_total", &[("route", "gateway")]);
        assert!(served > 0.0, "node {} served none of the key's requests", i + 1);
        let leases = cluster.node(i).metric("shardgate_cluster_leases_total", &[("result", "granted")]);
        assert!(leases > 0.0, "node {} leased nothing from Redis", i + 1);
    }
}

#[test]
fn writes_a_killed_node_accepted_are_delivered_once_by_the_others() {
    let healthy = Arc::new(AtomicBool::new(false));
    let (origin, delivered) = counting_origin(&healthy);
    let extra = ["--durability", "sync", "--write-retries", "100"];
    let Some(mut cluster) = Cluster::start(
        "cluster::writes_a_killed_node_accepted_are_delivered_once_by_the_others",
        &origin.url(),
        &extra,
    ) else {
        return;
    };
    // The origin refuses (503) until the node is dead: no write is
    // delivered by the node that accepted it.
    let mut client = cluster.node(0).client();
    let ids: Vec<String> =
        (0..500).map(|i| write_id(&client.request(&async_write(&format!("/w/{i}"), "payload")))).collect();
    drop(client);
    cluster.kill_node(0);
    healthy.store(true, Ordering::Release);
    let killed = Instant::now();
    within("the survivors deliver all 500 writes", Duration::from_secs(120), || delivered.lock().unwrap().len() == 500);
    eprintln!("500 writes of a killed node delivered {:.1} s after the kill", killed.elapsed().as_secs_f64());
    within("every delivery is acknowledged", Duration::from_secs(30), || {
        let done: f64 = (1..3)
            .map(|i| cluster.node(i).metric("shardgate_cluster_deliveries_total", &[("result", "delivered")]))
            .sum();
        done >= 500.0
    });
    let counts = delivered.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "write {id} delivered {:?} times", counts.get(id));
    }
    for id in ids.iter().step_by(100) {
        let status = cluster.node(1).send(&get(&format!("/_writes/{id}"), ""));
        assert_eq!(status.status, 200, "{}", status.text());
        assert!(status.text().contains("\"status\":\"delivered\""), "{}", status.text());
    }
}

#[test]
fn a_purge_sent_to_any_node_reaches_the_node_that_stores_the_url() {
    let healthy = Arc::new(AtomicBool::new(true));
    let (origin, _) = counting_origin(&healthy);
    let Some(cluster) =
        Cluster::start("cluster::a_purge_sent_to_any_node_reaches_the_node_that_stores_the_url", &origin.url(), &[])
    else {
        return;
    };
    let x_cache = |cluster: &Cluster| cluster.router().request(&get("/p/1", "")).header("x-cache").unwrap().to_string();
    let stored = |cluster: &Cluster| {
        let first = cluster.router().request(&get("/p/1", ""));
        let second = cluster.router().request(&get("/p/1", ""));
        assert_eq!(
            second.header("x-cache"),
            Some("HIT"),
            "{:?} then {:?}",
            first.header("cache-status"),
            second.header("cache-status")
        );
    };
    // Every family the contract lists for a cluster is exposed.
    let spec = include_str!("../../docs/spec.md");
    let section = &spec[spec.find("## 8. Several nodes").expect("a cluster section")..];
    let families: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split(['`', '{']).next())
        .filter(|name| name.starts_with("shardgate_cluster_"))
        .collect();
    assert!(families.len() >= 6, "{families:?}");
    let metrics = cluster.node(0).send(&get("/metrics", "")).text();
    for family in families {
        assert!(metrics.contains(&format!("# TYPE {family} ")), "{family} is not exposed");
    }
    stored(&cluster);
    let holder = (0..3)
        .find(|&i| cluster.node(i).metric("shardgate_gateway_cache_objects", &[]) > 0.0)
        .expect("one node stores /p/1");
    // Through the router: it reaches the holder.
    assert_eq!(cluster.router().request(&purge("/p/1", "")).status, 200);
    assert_eq!(x_cache(&cluster), "MISS");
    // Straight to another node: sent on to every node.
    stored(&cluster);
    let other = (holder + 1) % 3;
    assert_eq!(cluster.node(other).send(&purge("/p/1", "")).status, 202);
    within("the holder drops /p/1", Duration::from_secs(10), || x_cache(&cluster) == "MISS");
    // By surrogate key, at another node.
    stored(&cluster);
    let tags = cluster.node(other).send(&purge("/", "Surrogate-Key: group-a\r\n"));
    assert_eq!(tags.status, 200, "{}", tags.text());
    within("the holder drops what is tagged group-a", Duration::from_secs(10), || x_cache(&cluster) == "MISS");
}

#[test]
fn with_redis_down_no_request_fails_and_each_node_enforces_its_share() {
    let origin = Origin::start(|_| Reply::ok("max-age=600", "x"));
    let test = "cluster::with_redis_down_no_request_fails_and_each_node_enforces_its_share";
    let Some(mut cluster) = Cluster::start(test, &origin.url(), &["--rate-limit", "30/60s"]) else {
        return;
    };
    // A burst of 60 from one API key at one node: how many pass.
    let burst = |cluster: &Cluster, node: usize, key: &str| {
        let mut client = cluster.node(node).client();
        let mut accepted = 0;
        for i in 0..60 {
            let response = client.request(&get(&format!("/b/{i}"), &format!("X-API-Key: {key}\r\n")));
            assert!(matches!(response.status, 200 | 429), "status {}", response.status);
            accepted += u32::from(response.status == 200);
        }
        accepted
    };
    assert_eq!(burst(&cluster, 0, "k1"), 30, "Redis holds the whole limit");
    cluster.redis = None;
    within("node 2 notices Redis is gone", Duration::from_secs(10), || {
        cluster.node(1).metric("shardgate_cluster_up", &[("service", "redis")]) == 0.0
    });
    assert_eq!(burst(&cluster, 1, "k2"), 10, "alone, a node enforces the limit / --cluster-size");
    cluster.redis = Some(start_redis(cluster.redis_port));
    within("node 3 reaches Redis again", Duration::from_secs(10), || {
        cluster.node(2).metric("shardgate_cluster_up", &[("service", "redis")]) == 1.0
    });
    assert_eq!(burst(&cluster, 2, "k3"), 30, "back to the shared limit");
}

#[test]
fn with_nats_down_writes_are_accepted_and_delivered_once_it_returns() {
    let healthy = Arc::new(AtomicBool::new(true));
    let (origin, delivered) = counting_origin(&healthy);
    let test = "cluster::with_nats_down_writes_are_accepted_and_delivered_once_it_returns";
    let Some(mut cluster) = Cluster::start(test, &origin.url(), &["--durability", "sync"]) else {
        return;
    };
    cluster.nats = None;
    within("node 1 notices NATS is gone", Duration::from_secs(10), || {
        cluster.node(0).metric("shardgate_cluster_up", &[("service", "nats")]) == 0.0
    });
    let mut client = cluster.node(0).client();
    let ids: Vec<String> =
        (0..20).map(|i| write_id(&client.request(&async_write(&format!("/n/{i}"), "payload")))).collect();
    let queued = client.request(&get(&format!("/_writes/{}", ids[0]), ""));
    assert!(queued.text().contains("\"status\":\"queued\""), "{}", queued.text());
    assert!(delivered.lock().unwrap().is_empty(), "delivered while NATS was down");
    cluster.nats = Some(start_nats(cluster.nats_port, &cluster.dir.path().join("nats")));
    within("the writes are delivered once NATS is back", Duration::from_secs(60), || {
        delivered.lock().unwrap().len() == 20
    });
    let counts = delivered.lock().unwrap().clone();
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)), "{counts:?}");
    within("the status says delivered", Duration::from_secs(10), || {
        client.request(&get(&format!("/_writes/{}", ids[19]), "")).text().contains("\"status\":\"delivered\"")
    });
}

#[test]
fn removing_a_node_from_haproxy_moves_about_a_third_of_the_keys() {
    let origin = Origin::start(|_| Reply::ok("max-age=600", "x"));
    let test = "cluster::removing_a_node_from_haproxy_moves_about_a_third_of_the_keys";
    let Some(cluster) = Cluster::start(test, &origin.url(), &[]) else {
        return;
    };
    const KEYS: usize = 10_000;
    let pass = |cluster: &Cluster| {
        let mut client = cluster.router();
        (0..KEYS).filter(|i| client.request(&get(&format!("/k/{i}"), "")).header("x-cache") == Some("MISS")).count()
    };
    assert_eq!(pass(&cluster), KEYS, "the first pass stores every key");
    assert_eq!(pass(&cluster), 0, "the second pass hits every key where it was stored");
    let answer = cluster.haproxy("disable server shardgate/n3");
    assert!(answer.trim().is_empty(), "haproxy: {answer}");
    let moved = pass(&cluster);
    let share = moved as f64 / KEYS as f64;
    eprintln!("removing one of three nodes moved {moved} of {KEYS} keys ({:.1}%)", share * 100.0);
    assert!(share <= 0.40, "{moved} of {KEYS} keys moved");
    assert!(share >= 0.20, "only {moved} of {KEYS} keys moved: was n3 serving?");
}
