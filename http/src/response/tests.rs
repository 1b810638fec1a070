use std::time::Duration;

use super::*;

fn date() -> DateCache {
    DateCache::new(UNIX_EPOCH + Duration::from_secs(784_111_777))
}

fn check(response: &Response, head_only: bool, persistence: Persistence, expect: &str) {
    let mut out = Vec::new();
    let framing = Framing { head_only, chunked_ok: true, persistence, rate: None };
    let shared = encode(&mut out, response, &date(), framing);
    assert_eq!(shared, (Tail::None, false), "small bodies are copied");
    assert_eq!(String::from_utf8(out).unwrap(), expect);
}

#[test]
fn large_bodies_are_handed_back_not_copied() {
    let body = Bytes::from(vec![b'v'; SHARED_BODY_BYTES_MIN]);
    let response = Response { status: 200, body: body.clone(), ..Response::default() };
    let mut out = Vec::new();
    let framing = Framing { head_only: false, chunked_ok: true, persistence: Persistence::KeepAlive11, rate: None };
    let (Tail::Shared(shared), false) = encode(&mut out, &response, &date(), framing) else {
        panic!("handed back");
    };
    assert_eq!(shared.as_ptr(), body.as_ptr(), "the same buffer, not a copy");
    let head = String::from_utf8(out).unwrap();
    assert!(head.ends_with("\r\n\r\n") && head.contains(&format!("Content-Length: {SHARED_BODY_BYTES_MIN}")));
    let head_only = Framing { head_only: true, ..framing };
    assert_eq!(encode(&mut Vec::new(), &response, &date(), head_only), (Tail::None, false), "HEAD sends no body");
}

#[test]
fn value_response() {
    let response = Response {
        status: 200,
        content_type: Some(Bytes::from_static(b"text/plain")),
        etag: Some(Etag(0xab)),
        shard: Some((1, 2)),
        body: Bytes::from_static(b"hello"),
        ..Response::default()
    };
    let head = "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nETag: \"00000000000000ab\"\r\nX-Shard: 1/2\r\n\r\n";
    check(&response, false, Persistence::KeepAlive11, &format!("{head}hello"));
    // HEAD keeps Content-Length and drops the body.
    check(&response, true, Persistence::KeepAlive11, head);
}

#[test]
fn bodyless_statuses_have_no_content_length() {
    check(
        &Response::new(204),
        false,
        Persistence::Close,
        "HTTP/1.1 204 No Content\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
    );
    let not_modified = Response { etag: Some(Etag(1)), ..Response::new(304) };
    check(
        &not_modified,
        false,
        Persistence::KeepAlive10,
        "HTTP/1.1 304 Not Modified\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"0000000000000001\"\r\nConnection: keep-alive\r\n\r\n",
    );
}

#[test]
fn problem_details() {
    let response = Response { extra: Extra::Allow(&"GET, HEAD"), ..Response::problem(405, "say \"hi\"\n") };
    let body = "{\"type\":\"about:blank\",\"title\":\"Method Not Allowed\",\"status\":405,\"detail\":\"say \\\"hi\\\"\\u000a\"}";
    check(
        &response,
        false,
        Persistence::KeepAlive11,
        &format!(
            "HTTP/1.1 405 Method Not Allowed\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: {}\r\nContent-Type: application/problem+json\r\nAllow: GET, HEAD\r\n\r\n{body}",
            body.len()
        ),
    );
    let overloaded = Response::overloaded("queue full");
    assert_eq!((overloaded.status, overloaded.retry_after_s), (503, Some(1)));
}

#[test]
fn date_cache_changes_each_second() {
    let mut cache = date();
    let first = cache.text().to_vec();
    cache.refresh(UNIX_EPOCH + Duration::from_millis(784_111_777_999));
    assert_eq!(cache.text(), &first[..]);
    cache.refresh(UNIX_EPOCH + Duration::from_secs(784_111_778));
    assert_eq!(cache.text(), b"Sun, 06 Nov 1994 08:49:38 GMT");
}

#[test]
fn rate_limit_fields() {
    let item = |writes, quota, window_s, remaining, reset_s| RateItem { writes, quota, window_s, remaining, reset_s };
    let rate = RateHeaders { items: [Some(item(false, 100, 10, 50, 3)), Some(item(true, 10, 1, 0, 1))] };
    let mut out = Vec::new();
    let framing =
        Framing { head_only: false, chunked_ok: true, persistence: Persistence::KeepAlive11, rate: Some(&rate) };
    let _ = encode(&mut out, &Response::new(204), &date(), framing);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nRateLimit-Policy: \"default\";q=100;w=10, \"writes\";q=10;w=1\r\n"), "{text}");
    assert!(text.contains("\r\nRateLimit: \"default\";r=50;t=3, \"writes\";r=0;t=1\r\n"), "{text}");
    // No items, no fields.
    let mut out = Vec::new();
    let empty = RateHeaders::default();
    let framing =
        Framing { head_only: false, chunked_ok: true, persistence: Persistence::KeepAlive11, rate: Some(&empty) };
    let _ = encode(&mut out, &Response::new(204), &date(), framing);
    assert!(!String::from_utf8(out).unwrap().contains("RateLimit"));
}

/// A relayed response: its own `Date`, `Cache-Status` (RFC 9211) and
/// `Content-Range`; a stream of unknown length goes chunked to HTTP/1.1
/// and to the close to HTTP/1.0.
#[test]
fn relayed_fields_and_stream_framing() {
    let proxied = Proxied {
        date: Some(*b"Sat, 28 Nov 2026 07:00:00 GMT"),
        x_cache: Some("MISS"),
        cache_status: Some(CacheStatus {
            fwd: Some(Forward::UriMiss),
            fwd_status: Some(206),
            stored: true,
            collapsed: true,
            ttl_s: Some(-3),
            ..CacheStatus::default()
        }),
        cache_key: Some(Bytes::from_static(b"http://h/\"a\"\x01")),
        content_range: Some(ContentRange::Bytes { first: 2, last: 4, complete: 10 }),
        ..Proxied::new(Bytes::from_static(b"Partial Content"), Bytes::new(), None, None)
    };
    let response = Response {
        status: 206,
        body: Bytes::from_static(b"cde"),
        extra: Extra::Proxied(Box::new(proxied)),
        ..Response::default()
    };
    let mut out = Vec::new();
    let framing = Framing { head_only: false, chunked_ok: true, persistence: Persistence::KeepAlive11, rate: None };
    let _ = encode(&mut out, &response, &date(), framing);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 206 Partial Content\r\nDate: Sat, 28 Nov 2026 07:00:00 GMT\r\nContent-Length: 3\r\nX-Cache: MISS\r\n\
         Cache-Status: shardgate; fwd=uri-miss; fwd-status=206; stored; collapsed; ttl=-3; key=\"http://h/\\\"a\\\"%01\"\r\n\
         Content-Range: bytes 2-4/10\r\n\r\ncde"
    );
    let (_writer, reader) = crate::body::channel(false, 16, None);
    let stream = Proxied {
        body: ProxiedBody::Stream(StreamBody { reader, skip: 0, length: None }),
        ..Proxied::new(Bytes::from_static(b"OK"), Bytes::new(), None, None)
    };
    let response = Response { status: 200, extra: Extra::Proxied(Box::new(stream)), ..Response::default() };
    let mut out = Vec::new();
    let (tail, to_close) = encode(&mut out, &response, &date(), framing);
    assert!(matches!(tail, Tail::Stream { chunked: true, .. }) && !to_close);
    assert!(String::from_utf8_lossy(&out).contains("Transfer-Encoding: chunked\r\n"));
    let http10 = Framing { chunked_ok: false, persistence: Persistence::KeepAlive10, ..framing };
    let mut out = Vec::new();
    let (tail, to_close) = encode(&mut out, &response, &date(), http10);
    assert!(matches!(tail, Tail::Stream { chunked: false, .. }) && to_close, "HTTP/1.0: to the close");
    let head = String::from_utf8_lossy(&out).to_string();
    assert!(
        head.contains("Connection: close") && !head.contains("Content-Length") && !head.contains("Transfer-Encoding")
    );
}
