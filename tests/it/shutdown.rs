//! SIGTERM / SIGINT: stop accepting, finish in-flight requests, exit 0.

use std::time::Duration;

use std::net::TcpStream;

use crate::harness::{eventually, get, put, Server};

#[test]
fn sigterm_drains_idle_connections_and_exits_zero() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut idle = server.client();
    assert_eq!(idle.request(&put("/v1/kv/a", "1")).status, 201);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5)).expect("exited within 5 s");
    assert_eq!(status.code(), Some(0));
    assert!(idle.is_closed());
}

#[test]
fn in_flight_request_finishes_during_shutdown() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    assert_eq!(c.request(&get("/healthz")).status, 200);
    // Half a request is in flight when the signal arrives: its head was
    // read (the server answered `100 Continue`), its body not yet.
    c.write(b"PUT /v1/kv/late HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.response().status, 100);
    c.write(b"01234");
    server.signal(libc::SIGINT);
    // Every core has begun its shutdown once no listener accepts.
    let addr = server.addr;
    eventually("the listeners close", || TcpStream::connect(addr).is_err());
    c.write(b"56789");
    let response = c.response();
    assert_eq!(response.status, 201);
    assert_eq!(response.header("connection"), Some("close"));
    let status = server.wait_exit(Duration::from_secs(5)).expect("exited within 5 s");
    assert_eq!(status.code(), Some(0));
}
