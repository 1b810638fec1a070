use super::*;

#[test]
fn keys_are_percent_decoded_and_bounded() {
    assert_eq!(&*decode_key(b"a%20b%2Fc").unwrap(), b"a b/c");
    assert_eq!(&*decode_key(b"%e2%9c%93").unwrap(), "✓".as_bytes());
    assert!(matches!(decode_key(b"plain+key").unwrap(), Cow::Borrowed(b"plain+key")));
    for (raw, status) in [
        (&b"%zz"[..], 400),
        (b"%4", 400),
        (b"%+1", 400),
        (b"", 404),
        (&[b'k'; 1025], 414),
        (b"%00w/x", 400),
        (b"%00w%2Fx", 400),
    ] {
        assert_eq!(decode_key(raw).unwrap_err().status, status, "{}", String::from_utf8_lossy(raw));
    }
    assert_eq!(decode_key(&[b'k'; 1024]).unwrap().len(), 1024);
    assert_eq!(&*decode_key(b"%00w").unwrap(), b"\0w", "only the reserved prefix itself is refused");
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

#[test]
fn durability_header() {
    for (header, default, expect) in [
        (None, false, Ok(false)),
        (None, true, Ok(true)),
        (Some(&b"SYNC"[..]), false, Ok(true)),
        (Some(b"async"), true, Ok(false)),
    ] {
        assert_eq!(wants_sync(header, default), expect);
    }
    assert_eq!(wants_sync(Some(b"maybe"), false).unwrap_err().status, 400);
}

#[test]
fn overlong_record_fields_map_to_their_statuses() {
    use crate::record::{check_lengths, CONTENT_TYPE_BYTES_MAX};
    let long_type = vec![b't'; CONTENT_TYPE_BYTES_MAX + 1];
    for (key, content_type, expect) in [
        (&b"k"[..], &b"text/plain"[..], None),
        (b"", b"", Some(414)),
        (b"k", &long_type[..], Some(431)),
        (b"k", &long_type[..CONTENT_TYPE_BYTES_MAX], None),
    ] {
        let status = check_lengths(key, content_type, b"v").err().map(|field| too_long(field).status);
        assert_eq!(status, expect, "key {} bytes, content type {} bytes", key.len(), content_type.len());
    }
}
