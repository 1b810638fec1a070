//! HTTP/1.1 behaviour: keep-alive, pipelining, chunked bodies, 100-continue,
//! HTTP/1.0, Connection: close, and request-smuggling refusals.

use std::io::Read;
use std::time::Duration;

use crate::harness::{get, put, Server};

#[test]
fn keep_alive_and_pipelining() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    let mut batch = String::new();
    for i in 0..20 {
        batch += &put(&format!("/v1/kv/p{i}"), &format!("v{i}"));
        batch += &get(&format!("/v1/kv/p{i}"));
    }
    c.write(batch.as_bytes());
    for i in 0..20 {
        assert_eq!(c.response().status, 201, "PUT p{i}");
        assert_eq!(c.response().text(), format!("v{i}"), "GET p{i}");
    }
    // Still usable afterwards.
    assert_eq!(c.request(&get("/healthz")).status, 200);
}

#[test]
fn connection_close_and_http_1_0() {
    let server = Server::start(&["--shards", "1"]);
    let mut c = server.client();
    let response = c.request("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(c.is_closed());

    let mut c = server.client();
    let response = c.request("GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(c.is_closed(), "HTTP/1.0 closes by default");

    let mut c = server.client();
    let response = c.request("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert_eq!(c.request("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").status, 200);
}

#[test]
fn chunked_request_bodies() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    let chunked = "PUT /v1/kv/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n";
    assert_eq!(c.request(chunked).status, 201);
    assert_eq!(c.request(&get("/v1/kv/chunked")).text(), "hello world");
    // The same connection goes on after a chunked body.
    assert_eq!(c.request(&get("/healthz")).status, 200);
}

#[test]
fn expect_100_continue() {
    let server = Server::start(&["--shards", "1"]);
    let mut c = server.client();
    c.write(b"PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    let interim = c.response();
    assert_eq!(interim.status, 100);
    c.write(b"body");
    assert_eq!(c.response().status, 201);
    assert_eq!(c.request(&get("/v1/kv/big")).text(), "body");
    // Too large: the final status comes at once, no 100.
    c.write(b"PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n");
    c.response().assert_problem(413);
    let mut c = server.client();
    let unknown = c.request("PUT /v1/kv/x HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx");
    unknown.assert_problem(417);
}

#[test]
fn smuggling_vectors_get_400_and_close() {
    let server = Server::start(&["--shards", "1"]);
    // (family, request): every one must be refused with 400 and a close.
    let vectors = [
        ("CL.TE", "POST /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ("TE.CL", "POST /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("duplicate CL", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("CL list", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd"),
        ("signed CL", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"),
        ("hex CL", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc"),
        ("TE.TE: a coding before chunked", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE.TE: an unknown coding", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("TE.TE: chunked twice", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE.TE: a second line with another coding", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        ("TE.TE: quoted", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n"),
        ("TE in HTTP/1.0", "PUT /v1/kv/a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("space before the colon", "GET /v1/kv/a HTTP/1.1\r\nHost : t\r\n\r\n"),
        ("space before the TE colon", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", "GET /v1/kv/a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("obs-fold of TE", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        ("bare CR in a field", "GET /v1/kv/a HTTP/1.1\r\nHost: t\r\nX-A: b\rc\r\n\r\n"),
        ("bare LF chunk line", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
        ("chunk-size overflow", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n"),
        ("chunk-size not hex", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension without a name", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension with a bare CR", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension with an open quote", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n"),
        ("chunk data longer than its size", "PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"),
        ("two Hosts", "GET /v1/kv/a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n"),
    ];
    for (family, vector) in vectors {
        let mut c = server.client();
        let response = c.request(vector);
        assert_eq!(response.status, 400, "{family}: {vector:?}");
        response.assert_problem(400);
        assert_eq!(response.header("connection"), Some("close"), "{family}: {vector:?}");
        assert!(c.is_closed(), "{family}: {vector:?}");
    }
    // Nothing was stored by any of them.
    server.send(&get("/v1/kv/a")).assert_problem(404);
}

#[test]
fn malformed_requests_get_400_and_close() {
    let server = Server::start(&["--shards", "1"]);
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n",
    ] {
        let mut c = server.client();
        c.request(bad).assert_problem(400);
        assert!(c.is_closed(), "{bad:?}");
    }
}

#[test]
fn split_writes_are_reassembled() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    let request = put("/v1/kv/split", "0123456789");
    for byte in request.as_bytes() {
        c.write(std::slice::from_ref(byte));
    }
    assert_eq!(c.response().status, 201);
    assert_eq!(c.request(&get("/v1/kv/split")).text(), "0123456789");
}

#[test]
fn client_that_closes_mid_request_does_not_disturb_others() {
    let server = Server::start(&["--shards", "1"]);
    {
        let mut c = server.client();
        c.write(b"PUT /v1/kv/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part");
    }
    let mut c = server.client();
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.request(&get("/healthz")).status, 200);
    let mut rest = Vec::new();
    let _ = c.stream.set_nonblocking(true);
    let _ = c.stream.read_to_end(&mut rest);
}
