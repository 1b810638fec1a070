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

#[test]
fn host_values_are_authorities() {
    for valid in [
        &b""[..],
        b"api.example",
        b"API.Example:8080",
        b"127.0.0.1",
        b"127.0.0.1:80",
        b"[::1]",
        b"[2001:db8::7]:443",
        b"[v1.fe80::a+en1]",
        b"xn--nxasmq6b.example",
        b"a%2Db.example",
        b"h:",
    ] {
        assert!(is_valid_host(valid), "{}", String::from_utf8_lossy(valid));
    }
    for invalid in [
        &b"h.example/p/a"[..],
        b"h.example?x",
        b"h.example#f",
        b"user@h.example",
        b"h example",
        b"h.example:8o",
        b"[::1",
        b"[not-ip]",
        b"[::1]x",
        b"h%zz",
        b"h%2",
        b"h\tx",
        b"\"h\"",
    ] {
        assert!(!is_valid_host(invalid), "{}", String::from_utf8_lossy(invalid));
    }
}
