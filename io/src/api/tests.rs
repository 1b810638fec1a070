use super::*;

#[test]
fn targets_split_into_path_and_query() {
    assert_eq!(split_target(b"/v1/kv/a?ttl=5"), (&b"/v1/kv/a"[..], &b"ttl=5"[..]));
    assert_eq!(split_target(b"/v1/kv/a"), (&b"/v1/kv/a"[..], &b""[..]));
    assert_eq!(split_target(b"http://host:8080/v1/kv/a?x"), (&b"/v1/kv/a"[..], &b"x"[..]));
    assert_eq!(split_target(b"http://host"), (&b"/"[..], &b""[..]));
}

#[test]
fn keys_are_percent_decoded_and_bounded() {
    assert_eq!(&*decode_key(b"a%20b%2Fc").unwrap(), b"a b/c");
    assert_eq!(&*decode_key(b"%e2%9c%93").unwrap(), "✓".as_bytes());
    assert!(matches!(decode_key(b"plain+key").unwrap(), Cow::Borrowed(b"plain+key")));
    assert_eq!(decode_key(b"%zz").unwrap_err().status, 400);
    assert_eq!(decode_key(b"%4").unwrap_err().status, 400);
    assert_eq!(decode_key(b"").unwrap_err().status, 404);
    assert_eq!(decode_key(&[b'k'; 1024]).unwrap().len(), 1024);
    assert_eq!(decode_key(&[b'k'; 1025]).unwrap_err().status, 414);
    // 1024 bytes after decoding is fine even when the raw form is longer.
    assert_eq!(decode_key("%41".repeat(1024).as_bytes()).unwrap().len(), 1024);
    assert_eq!(decode_key("%41".repeat(1025).as_bytes()).unwrap_err().status, 414);
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl(b"").unwrap(), None);
    assert_eq!(parse_ttl(b"other=1").unwrap(), None);
    assert_eq!(parse_ttl(b"ttl=60").unwrap(), Some(60));
    assert_eq!(parse_ttl(b"x=1&ttl=5").unwrap(), Some(5));
    for bad in
        [&b"ttl="[..], b"ttl=0", b"ttl=-1", b"ttl=1.5", b"ttl=abc", b"ttl=4294967296", b"ttl=99999999999999999999999"]
    {
        assert_eq!(parse_ttl(bad).unwrap_err().status, 400, "{}", String::from_utf8_lossy(bad));
    }
}
