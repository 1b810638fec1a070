use std::time::Duration;

use super::*;

fn date() -> DateCache {
    DateCache::new(UNIX_EPOCH + Duration::from_secs(784_111_777))
}

fn check(response: &Response, head_only: bool, persistence: Persistence, expect: &str) {
    let mut out = Vec::new();
    let shared = encode(&mut out, response, &date(), Framing { head_only, persistence, rate: None });
    assert_eq!(shared, None, "small bodies are copied");
    assert_eq!(String::from_utf8(out).unwrap(), expect);
}

#[test]
fn large_bodies_are_handed_back_not_copied() {
    let body = Bytes::from(vec![b'v'; SHARED_BODY_BYTES_MIN]);
    let response = Response { status: 200, body: body.clone(), ..Response::default() };
    let mut out = Vec::new();
    let framing = Framing { head_only: false, persistence: Persistence::KeepAlive11, rate: None };
    let shared = encode(&mut out, &response, &date(), framing).expect("handed back");
    assert_eq!(shared.as_ptr(), body.as_ptr(), "the same buffer, not a copy");
    let head = String::from_utf8(out).unwrap();
    assert!(head.ends_with("\r\n\r\n") && head.contains(&format!("Content-Length: {SHARED_BODY_BYTES_MIN}")));
    let head_only = Framing { head_only: true, ..framing };
    assert_eq!(encode(&mut Vec::new(), &response, &date(), head_only), None, "HEAD sends no body");
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
    let framing = Framing { head_only: false, persistence: Persistence::KeepAlive11, rate: Some(&rate) };
    let _ = encode(&mut out, &Response::new(204), &date(), framing);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nRateLimit-Policy: \"default\";q=100;w=10, \"writes\";q=10;w=1\r\n"), "{text}");
    assert!(text.contains("\r\nRateLimit: \"default\";r=50;t=3, \"writes\";r=0;t=1\r\n"), "{text}");
    // No items, no fields.
    let mut out = Vec::new();
    let empty = RateHeaders::default();
    let framing = Framing { head_only: false, persistence: Persistence::KeepAlive11, rate: Some(&empty) };
    let _ = encode(&mut out, &Response::new(204), &date(), framing);
    assert!(!String::from_utf8(out).unwrap().contains("RateLimit"));
}
