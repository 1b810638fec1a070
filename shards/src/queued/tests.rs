use super::*;

#[test]
fn ids_round_trip_and_reject_garbage() {
    let token = [7u8; TOKEN_BYTES];
    let id = format_id(3, 0x1f, &token);
    assert_eq!(parse_id(id.as_bytes()), Some(WriteId { key_hash: 3, sequence: 0x1f, token: Some(token) }));
    assert_eq!(parse_id(b"0000000000000003-1f"), Some(WriteId { key_hash: 3, sequence: 0x1f, token: None }));
    assert_eq!(parse_write_key(&write_key(u64::MAX, 9)), Some((u64::MAX, 9)));
    assert_eq!(embedded_hash(&write_key(0xabc, 9)), Some(0xabc));
    assert_eq!(embedded_hash(b"plain"), None);
    for bad in [
        &b""[..],
        b"3",
        b"-1",
        b"3-1",
        b"000000000000000x-1",
        b"0000000000000003-",
        b"0000000000000003-1-2",
        b"0000000000000003-1-0707070707070707070707zz",
        b"0000000000000003-1-070707070707070707070707-1",
    ] {
        assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn queued_writes_round_trip_and_truncation_is_refused() {
    let write = QueuedWrite {
        key_hash: 42,
        method: Bytes::from_static(b"PUT"),
        target: Bytes::from_static(b"/items/1?x=y"),
        fields: vec![
            (Bytes::from_static(b"Host"), Bytes::from_static(b"api")),
            (Bytes::from_static(b"X-A"), Bytes::new()),
        ],
        peer: Some("10.0.0.1".parse().unwrap()),
        body: Bytes::from_static(b"{\"a\":1}"),
    };
    let encoded = write.encode().expect("fits");
    assert_eq!(QueuedWrite::decode(&encoded), Some(write.clone()));
    for cut in 0..encoded.len() {
        assert!(QueuedWrite::decode(&encoded[..cut]).is_none(), "truncated at {cut}");
    }
}

#[test]
fn statuses_round_trip() {
    for status in [
        WriteStatus::Delivered(201),
        WriteStatus::Published,
        WriteStatus::Failed("after 3 tries: origin status 503".into()),
    ] {
        assert_eq!(WriteStatus::decode(&status.encode()), Some(status));
    }
    for bad in [&b"delivered x"[..], b"queued", b"", b"delivered"] {
        assert_eq!(WriteStatus::decode(bad), None);
    }
}

#[test]
fn parts_longer_than_their_length_field_are_refused_not_truncated() {
    let long = Bytes::from(vec![b'x'; u16::MAX as usize + 1]);
    let base = QueuedWrite {
        key_hash: 1,
        method: Bytes::from_static(b"POST"),
        target: Bytes::from_static(b"/"),
        fields: vec![],
        peer: None,
        body: Bytes::new(),
    };
    assert!(QueuedWrite { fields: vec![(long.clone(), Bytes::new())], ..base.clone() }.encode().is_none());
    assert!(QueuedWrite { method: long.clone(), ..base.clone() }.encode().is_none());
    let long_value = QueuedWrite { fields: vec![(Bytes::from_static(b"X"), long)], ..base };
    let encoded = long_value.encode().expect("a value has a four-byte length");
    assert_eq!(QueuedWrite::decode(&encoded), Some(long_value));
}

#[test]
fn receipts_round_trip_and_guard_their_tokens() {
    for owner in [None, Some(u64::MAX), Some(7)] {
        let receipt = Receipt { token: [9; TOKEN_BYTES], owner };
        let mut bytes = Vec::new();
        receipt.encode(&mut bytes);
        bytes.extend_from_slice(b"payload");
        assert_eq!(Receipt::decode(&bytes), Some((receipt, &b"payload"[..])));
        assert_eq!(open_record(STATUS_CONTENT_TYPE, &bytes), Some((Some(receipt), &b"payload"[..])));
        assert!(receipt.token_matches(&[9; TOKEN_BYTES]) && !receipt.token_matches(&[8; TOKEN_BYTES]));
    }
    assert_eq!(open_record(LEGACY_STATUS_CONTENT_TYPE, b"delivered 200"), Some((None, &b"delivered 200"[..])));
    assert_eq!(open_record(QUEUED_CONTENT_TYPE, b"short"), None);
    assert!(is_queued(LEGACY_QUEUED_CONTENT_TYPE) && is_queued(QUEUED_CONTENT_TYPE) && !is_queued(STATUS_CONTENT_TYPE));
}
