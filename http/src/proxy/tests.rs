use bytes::Bytes;

use super::*;
use crate::codec::{Decoded, Decoder, Limits};

fn proxy_request(raw: &[u8]) -> ProxyRequest {
    parse_trusting(raw, false)
}

fn parse_trusting(raw: &[u8], trust_forwarded: bool) -> ProxyRequest {
    let mut decoder = Decoder::new(Limits { head_bytes_max: 16 * 1024, body_bytes_max: 1 << 20 });
    let Ok(Decoded::Complete { request, .. }) = decoder.decode(raw) else { panic!("complete request expected") };
    ProxyRequest::parse(&request, Some("192.0.2.7".parse().unwrap()), trust_forwarded).unwrap()
}

#[test]
fn the_key_is_host_path_and_query_whatever_the_target_form() {
    let a = proxy_request(b"GET /p?q=1 HTTP/1.1\r\nHost: API.test\r\n\r\n");
    let b = proxy_request(b"GET http://ignored/p?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!((&a.key[..], a.hash), (&cache_key(b"http", b"api.test", b"/p?q=1")[..], b.hash));
    assert_eq!(&b.target[..], b"/p?q=1");
    let bare = proxy_request(b"GET http://api.test HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!((&bare.target[..], &bare.key[..]), (&b"/"[..], &cache_key(b"http", b"api.test", b"/")[..]));
}

#[test]
fn requests_to_the_origin_drop_hop_by_hop_and_add_proxy_fields() {
    let request = proxy_request(
        b"POST /w HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\n\
          X-Forwarded-For: 10.0.0.1\r\nVia: 1.0 edge\r\nIf-Match: \"a\"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    let sent = request.encode_for_origin(b"127.0.0.1:9", None);
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "POST /w HTTP/1.1\r\nHost: h\r\nIf-Match: \"a\"\r\nX-Forwarded-For: 192.0.2.7\r\n\
         Forwarded: for=192.0.2.7;proto=http\r\nVia: 1.0 edge, 1.1 shardgate\r\nContent-Length: 2\r\n\r\nhi"
    );
}

#[test]
fn cache_fills_are_gets_with_the_caches_validators_only() {
    let request = proxy_request(b"HEAD /r HTTP/1.0\r\nIf-None-Match: \"client\"\r\nRange: bytes=0-1\r\n\r\n");
    let validators = Validators {
        etag: Some(Bytes::from_static(b"\"stored\"")),
        last_modified: Some(Bytes::from_static(b"Sun, 06 Nov 1994 08:49:37 GMT")),
    };
    let sent = request.encode_for_origin(b"127.0.0.1:9", Some(&validators));
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "GET /r HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7;proto=http\r\n\
         Via: 1.1 shardgate\r\nIf-None-Match: \"stored\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    );
}

#[test]
fn prefer_respond_async_is_found_among_preferences() {
    assert!(
        proxy_request(b"PUT / HTTP/1.1\r\nHost: h\r\nPrefer: return=minimal, Respond-Async\r\n\r\n").prefers_async()
    );
    assert!(proxy_request(b"PUT / HTTP/1.1\r\nHost: h\r\nPrefer: wait=5\r\nPrefer: respond-async; x=1\r\n\r\n")
        .prefers_async());
    assert!(!proxy_request(b"PUT / HTTP/1.1\r\nHost: h\r\nPrefer: respond-asynchronously\r\n\r\n").prefers_async());
}

#[test]
fn queued_writes_come_back_as_the_same_request_and_carry_their_id() {
    let request = proxy_request(b"PUT /items/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
    let back = ProxyRequest::from_queued(request.to_queued());
    assert_eq!(
        (back.method, &back.target[..], &back.body[..], back.hash),
        (Method::Put, &b"/items/1"[..], &b"hi"[..], request.hash)
    );
    let sent = back.encode_for_delivery(b"o", "abc-1");
    assert!(std::str::from_utf8(&sent)
        .unwrap()
        .starts_with("PUT /items/1 HTTP/1.1\r\nIdempotency-Key: abc-1\r\nHost: h\r\n"));
}

#[test]
fn keys_are_unambiguous_and_follow_what_the_origin_receives() {
    // The PortSwigger-style split: host bytes plus target must not collide.
    assert_ne!(cache_key(b"http", b"h.example/p/a", b"/p/x"), cache_key(b"http", b"h.example", b"/p/a/p/x"));
    // Fields that Connection nominates are gone from the request the origin
    // gets, and so from every value the cache reads.
    let request = proxy_request(b"GET /v HTTP/1.1\r\nHost: h\r\nConnection: accept\r\nAccept: text/html\r\n\r\n");
    assert_eq!(request.field_value(b"accept"), None);
    assert!(!request.encode_for_origin(b"o", None).windows(7).any(|w| w.eq_ignore_ascii_case(b"accept:")));
}

#[test]
fn a_field_value_is_all_its_lines() {
    let request = proxy_request(b"GET /v HTTP/1.1\r\nHost: h\r\nAccept: a\r\nX: 1\r\nAccept: b\r\nAccept: c\r\n\r\n");
    assert_eq!(request.field_value(b"ACCEPT").as_deref(), Some(&b"a, b, c"[..]));
    assert_eq!(request.field_value(b"x").as_deref(), Some(&b"1"[..]));
    assert_eq!(request.field_value(b"missing"), None);
}

#[test]
fn client_forwarding_fields_are_replaced_unless_trusted() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\
                Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let sent = String::from_utf8(proxy_request(raw).encode_for_origin(b"o", None).to_vec()).unwrap();
    for planted in ["evil", "https", "6.6.6.6"] {
        assert!(!sent.contains(planted), "{planted} reached the origin: {sent}");
    }
    assert!(
        sent.contains("X-Forwarded-For: 192.0.2.7\r\n") && sent.contains("Forwarded: for=192.0.2.7;proto=http\r\n")
    );
    let trusted = String::from_utf8(parse_trusting(raw, true).encode_for_origin(b"o", None).to_vec()).unwrap();
    assert!(trusted.contains("X-Forwarded-For: 6.6.6.6, 192.0.2.7\r\n"), "{trusted}");
    assert!(trusted.contains("Forwarded: for=6.6.6.6, for=192.0.2.7;proto=http\r\n"), "{trusted}");
    assert!(trusted.contains("X-Forwarded-Host: evil\r\n"));
}
