use super::*;
use crate::http::codec::{Decoded, Decoder, Limits};

fn proxy_request(raw: &[u8]) -> ProxyRequest {
    let mut decoder = Decoder::new(Limits { head_bytes_max: 16 * 1024, body_bytes_max: 1 << 20 });
    let Ok(Decoded::Complete { request, .. }) = decoder.decode(raw) else { panic!("complete request expected") };
    ProxyRequest::parse(&request, Some("192.0.2.7".parse().unwrap())).unwrap()
}

fn origin() -> OriginAddress {
    OriginAddress { url: "http://127.0.0.1:9".into(), address: ([127, 0, 0, 1], 9).into() }
}

#[test]
fn the_key_is_host_path_and_query_whatever_the_target_form() {
    let a = proxy_request(b"GET /p?q=1 HTTP/1.1\r\nHost: API.test\r\n\r\n");
    let b = proxy_request(b"GET http://ignored/p?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!((&a.key[..], a.hash), (&b"api.test/p?q=1"[..], b.hash));
    assert_eq!(&b.target[..], b"/p?q=1");
    let bare = proxy_request(b"GET http://api.test HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!((&bare.target[..], &bare.key[..]), (&b"/"[..], &b"api.test/"[..]));
}

#[test]
fn requests_to_the_origin_drop_hop_by_hop_and_add_proxy_fields() {
    let request = proxy_request(
        b"POST /w HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\n\
          X-Forwarded-For: 10.0.0.1\r\nVia: 1.0 edge\r\nIf-Match: \"a\"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    let sent = request.encode_for_origin(&origin(), None);
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "POST /w HTTP/1.1\r\nHost: h\r\nIf-Match: \"a\"\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\nVia: 1.0 edge, 1.1 shardgate\r\n\
         Content-Length: 2\r\n\r\nhi"
    );
}

#[test]
fn cache_fills_are_gets_with_the_caches_validators_only() {
    let request = proxy_request(b"HEAD /r HTTP/1.0\r\nIf-None-Match: \"client\"\r\nRange: bytes=0-1\r\n\r\n");
    let validators = Validators {
        etag: Some(Bytes::from_static(b"\"stored\"")),
        last_modified: Some(Bytes::from_static(b"Sun, 06 Nov 1994 08:49:37 GMT")),
    };
    let sent = request.encode_for_origin(&origin(), Some(&validators));
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "GET /r HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Forwarded-For: 192.0.2.7\r\nVia: 1.1 shardgate\r\nIf-None-Match: \"stored\"\r\n\
         If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
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
fn write_status_requests_route_to_the_shard_in_their_id() {
    let write = proxy_request(b"PUT /items/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    let status = format!("GET /_writes/{} HTTP/1.1\r\nHost: h\r\n\r\n", writes::format_id(write.hash, 0x1f));
    for shards in [2, 3, 8] {
        assert_eq!(owner(&proxy_request(status.as_bytes()), shards), owner(&write, shards));
    }
    let malformed = proxy_request(b"GET /_writes/9-1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(owner(&malformed, 4), shard_for_hash(malformed.hash, 4));
}

#[test]
fn bearer_tokens_compare_exactly() {
    assert!(bearer_matches(b"Bearer s3cret", "s3cret"));
    assert!(bearer_matches(b"bearer  s3cret ", "s3cret"));
    for wrong in [&b"Bearer s3cre"[..], b"Bearer s3crets", b"Basic s3cret", b"s3cret", b"Bearer "] {
        assert!(!bearer_matches(wrong, "s3cret"), "{}", String::from_utf8_lossy(wrong));
    }
}

#[test]
fn a_304_replaces_the_stored_fields_it_carries() {
    let stored = b"\r\nContent-Type: text/plain\r\nCache-Control: max-age=1\r\nETag: \"a\"";
    let update = b"\r\nCache-Control: max-age=60\r\nETag: \"a\"";
    let merged = merge_fields(stored, update);
    assert_eq!(&merged[..], b"\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\nETag: \"a\"");
    assert_eq!(field_of(&merged, b"cache-control"), Some(&b"max-age=60"[..]));
    assert_eq!(field_of(&merged, b"vary"), None);
}
