use shardgate_http::codec::{Decoded, Decoder, Limits};

use super::*;

fn proxy_request(raw: &[u8]) -> ProxyRequest {
    let mut decoder = Decoder::new(Limits { head_bytes_max: 16 * 1024, body_bytes_max: 1 << 20 });
    let Ok(Decoded::Complete { request, .. }) = decoder.decode(raw) else { panic!("complete request expected") };
    ProxyRequest::parse(&request, Some("192.0.2.7".parse().unwrap()), false).unwrap()
}

#[test]
fn write_status_requests_route_to_the_shard_in_their_id() {
    let write = proxy_request(b"PUT /items/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    let status = format!(
        "GET /_writes/{} HTTP/1.1\r\nHost: h\r\n\r\n",
        shardgate_shards::queued::format_id(write.hash, 0x1f, &[3; 12])
    );
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
