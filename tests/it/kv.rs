//! docs/spec.md §2: the key-value API.

use crate::harness::{eventually, get, put, Server};

#[test]
fn put_get_head_delete() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    let created = c.request(
        "PUT /v1/kv/user HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    );
    assert_eq!(created.status, 201);
    let etag = created.header("etag").expect("ETag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18, "{etag}");
    let shard = created.header("x-shard").expect("X-Shard").to_string();
    assert!(shard == "0/2" || shard == "1/2", "{shard}");

    let got = c.request(&get("/v1/kv/user"));
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"{\"a\":1}");
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("content-length"), Some("7"));
    assert_eq!(got.header("etag"), Some(etag.as_str()));
    assert_eq!(got.header("x-shard"), Some(shard.as_str()));

    c.write(b"HEAD /v1/kv/user HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.head_response();
    assert_eq!((head.status, head.header("content-length")), (200, Some("7")));
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    let replaced = c.request(&put("/v1/kv/user", "second"));
    assert_eq!(replaced.status, 200);
    assert_ne!(replaced.header("etag"), Some(etag.as_str()));
    assert_eq!(c.request(&get("/v1/kv/user")).header("content-type"), Some("application/octet-stream"));

    let deleted = c.request("DELETE /v1/kv/user HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.header("x-shard"), Some(shard.as_str()));
    c.request("DELETE /v1/kv/user HTTP/1.1\r\nHost: t\r\n\r\n").assert_problem(404);
    let missing = c.request(&get("/v1/kv/user"));
    missing.assert_problem(404);
    assert_eq!(missing.header("x-shard"), Some(shard.as_str()));
}

#[test]
fn conditional_requests() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    let create_only = "PUT /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-None-Match: *\r\nContent-Length: 1\r\n\r\na";
    let first = c.request(create_only);
    assert_eq!(first.status, 201);
    c.request(create_only).assert_problem(412);
    let etag = first.header("etag").unwrap().to_string();

    let stale = "PUT /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-Match: \"0000000000000000\"\r\nContent-Length: 1\r\n\r\nb";
    c.request(stale).assert_problem(412);
    let cas = format!("PUT /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-Match: {etag}\r\nContent-Length: 1\r\n\r\nb");
    let swapped = c.request(&cas);
    assert_eq!(swapped.status, 200);
    let new_etag = swapped.header("etag").unwrap().to_string();
    c.request(&cas).assert_problem(412);

    let revalidate = format!("GET /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-None-Match: {new_etag}\r\n\r\n");
    let not_modified = c.request(&revalidate);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(new_etag.as_str()));
    let changed = format!("GET /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n");
    assert_eq!(c.request(&changed).status, 200);

    let delete_stale = format!("DELETE /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-Match: {etag}\r\n\r\n");
    c.request(&delete_stale).assert_problem(412);
    let delete = format!("DELETE /v1/kv/lock HTTP/1.1\r\nHost: t\r\nIf-Match: {new_etag}\r\n\r\n");
    assert_eq!(c.request(&delete).status, 204);
}

#[test]
fn ttl_expires() {
    let server = Server::start(&["--shards", "1"]);
    let mut c = server.client();
    assert_eq!(c.request(&put("/v1/kv/session?ttl=1", "x")).status, 201);
    assert_eq!(c.request(&put("/v1/kv/kept?ttl=3600", "y")).status, 201);
    assert_eq!(c.request(&get("/v1/kv/session")).status, 200);
    // The shortest TTL the API allows; polled, so a slow machine only waits longer.
    eventually("the key expires", || c.request(&get("/v1/kv/session")).status == 404);
    c.request(&get("/v1/kv/session")).assert_problem(404);
    assert_eq!(c.request(&get("/v1/kv/kept")).status, 200);
    for bad in ["0", "-1", "abc", "1.5", ""] {
        c.request(&put(&format!("/v1/kv/k?ttl={bad}"), "x")).assert_problem(400);
    }
}

#[test]
fn keys_are_percent_decoded_and_bounded() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    assert_eq!(c.request(&put("/v1/kv/a%20b%2Fc", "spaced")).status, 201);
    // The same key, encoded differently.
    assert_eq!(c.request(&get("/v1/kv/%61%20b/c")).body, b"spaced");
    c.request(&get("/v1/kv/%zz")).assert_problem(400);
    c.request(&get("/v1/kv/")).assert_problem(404);
    let longest = "k".repeat(1024);
    assert_eq!(c.request(&put(&format!("/v1/kv/{longest}"), "v")).status, 201);
    assert_eq!(c.request(&get(&format!("/v1/kv/{longest}"))).body, b"v");
    c.request(&get(&format!("/v1/kv/{longest}k"))).assert_problem(414);
    // Binary and multi-byte keys.
    assert_eq!(c.request(&put("/v1/kv/%00%ff%e2%9c%93", "bin")).status, 201);
    assert_eq!(c.request(&get("/v1/kv/%00%FF%E2%9C%93")).body, b"bin");
}

#[test]
fn a_data_set_many_times_the_cache_reads_back() {
    // 64 KiB of cache across two shards; 512 values of 1 KiB: 8x the cache.
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shards", "2", "--cache-bytes", "64KiB"];
    let value = |i: usize| format!("{i:05}-{}", "v".repeat(1018));
    let server = Server::start_in(dir.path(), &args, &[]);
    let mut c = server.client();
    for i in 0..512 {
        assert_eq!(c.request(&put(&format!("/v1/kv/k{i}"), &value(i))).status, 201, "no 507 on a memory budget");
    }
    let check = |server: &Server| {
        let mut c = server.client();
        for round in 0..2 {
            for i in 0..512 {
                let response = c.request(&get(&format!("/v1/kv/k{i}")));
                assert_eq!(response.text(), value(i), "k{i}, round {round}");
                assert_eq!(response.header("content-type"), Some("application/octet-stream"));
            }
        }
        // The gauge is published at writes and by the 250 ms ticker, and
        // values may be evicted only once durable: poll (bounded) until it
        // shows the budget kept.
        let within = (0..300).any(|_| {
            let held = server.metric("shardgate_cache_bytes", &[]);
            let ok = held <= 65536.0 + 2.0 * 1024.0;
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ok
        });
        assert!(within, "cache bytes {} over the budget", server.metric("shardgate_cache_bytes", &[]));
        assert!(server.metric("shardgate_cache_evictions_total", &[]) > 0.0);
        assert!(server.metric("shardgate_cache_disk_reads_total", &[]) > 0.0, "values came back from disk");
    };
    check(&server);
    // Conditional reads of an evicted value need no disk read.
    let etag = c.request(&get("/v1/kv/k0")).header("etag").unwrap().to_string();
    let revalidate = format!("GET /v1/kv/k0 HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n");
    assert_eq!(c.request(&revalidate).status, 304);
    // And after a restart, which cannot hold them all in memory either.
    drop(c);
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(std::time::Duration::from_secs(10)).is_some());
    let server = Server::start_in(dir.path(), &args, &[]);
    check(&server);
}
