use super::*;

#[test]
fn targets_split_into_path_and_query() {
    assert_eq!(split_target(b"/v1/kv/a?ttl=5"), (&b"/v1/kv/a"[..], &b"ttl=5"[..]));
    assert_eq!(split_target(b"/v1/kv/a"), (&b"/v1/kv/a"[..], &b""[..]));
    assert_eq!(split_target(b"http://host:8080/v1/kv/a?x"), (&b"/v1/kv/a"[..], &b"x"[..]));
    assert_eq!(split_target(b"http://host"), (&b"/"[..], &b""[..]));
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

#[test]
fn connection_names_and_hop_by_hop_fields() {
    assert!(named_by_connection(b"keep-alive, X-Hop", b"x-hop"));
    assert!(!named_by_connection(b"keep-alive", b"x-hop"));
    assert!(is_hop_by_hop(b"Transfer-Encoding") && !is_hop_by_hop(b"X-End"));
}
