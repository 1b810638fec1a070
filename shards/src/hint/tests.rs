use super::*;

fn record<'a>(op: RecordOp, key: &'a str, value: &'a str, sequence: u64, expires_at_ms: Option<u64>) -> Record<'a> {
    let content_type: &[u8] = if op == RecordOp::Put { b"text/plain" } else { b"" };
    Record { op, sequence, timestamp_ms: 1, expires_at_ms, key: key.as_bytes(), content_type, value: value.as_bytes() }
}

/// A segment of records and the hint file written from it.
fn segment_and_hints(records: &[Record<'_>]) -> (Vec<u8>, Vec<u8>) {
    let mut segment = Vec::new();
    for r in records {
        r.encode(&mut segment);
    }
    let mut hints = Vec::new();
    let count = of_segment(&segment, &mut hints);
    finish(count, &mut hints);
    (segment, hints)
}

#[test]
fn hints_round_trip_every_field() {
    let records = [
        record(RecordOp::Put, "a", "one", 1, None),
        record(RecordOp::Put, "b", "two", 2, Some(99)),
        record(RecordOp::Delete, "a", "", 3, None),
    ];
    let (segment, hints) = segment_and_hints(&records);
    let decoded = decode(&hints).unwrap();
    assert_eq!(decoded.len(), 3);
    let mut offset = 0u64;
    for (hint, record) in decoded.iter().zip(&records) {
        assert_eq!(hint.op, record.op);
        assert_eq!(hint.key, record.key);
        assert_eq!(hint.content_type, record.content_type);
        assert_eq!(hint.offset, offset);
        assert_eq!(hint.bytes as usize, record.encoded_bytes());
        assert_eq!(hint.expires_at_ms, record.expires_at_ms);
        assert_eq!(hint.sequence, record.sequence);
        assert_eq!(hint.etag, Etag::of(record.content_type, record.value));
        // The hinted place holds exactly that record.
        let (at, length) = record::decode(&segment[offset as usize..]).unwrap();
        assert_eq!((at, length), (*record, hint.bytes as usize));
        offset += u64::from(hint.bytes);
    }
}

#[test]
fn any_damage_is_refused() {
    let records = [record(RecordOp::Put, "a", "one", 1, None), record(RecordOp::Put, "bb", "two", 2, None)];
    let (_, hints) = segment_and_hints(&records);
    for i in 0..hints.len() {
        for bit in 0..8 {
            let mut flipped = hints.clone();
            flipped[i] ^= 1 << bit;
            assert!(decode(&flipped).is_err(), "bit {bit} of byte {i}");
        }
    }
    for cut in 0..hints.len() {
        assert!(decode(&hints[..cut]).is_err(), "cut at {cut}");
    }
    let mut extended = hints.clone();
    extended.extend_from_slice(b"junk");
    assert!(decode(&extended).is_err());
    assert_eq!(decode(b""), Err(HintError::Truncated));
}

#[test]
fn recovery_from_hints_matches_recovery_from_records() {
    let first = [
        record(RecordOp::Put, "a", "a1", 1, None),
        record(RecordOp::Put, "b", "b1", 2, None),
        record(RecordOp::Put, "gone", "x", 3, Some(50)),
    ];
    let second = [record(RecordOp::Delete, "b", "", 4, None), record(RecordOp::Put, "c", "c1", 5, None)];
    let third = [record(RecordOp::Put, "a", "a2", 6, None)];
    let (s1, h1) = segment_and_hints(&first);
    let (s2, h2) = segment_and_hints(&second);
    let (s3, _) = segment_and_hints(&third);
    let offsets = [0, s1.len() as u64, (s1.len() + s2.len()) as u64];
    let read = [
        Source::Read { first: offsets[0], bytes: &s1 },
        Source::Read { first: offsets[1], bytes: &s2 },
        Source::Read { first: offsets[2], bytes: &s3 },
    ];
    let hinted = [
        Source::Hinted { first: offsets[0], hints: decode(&h1).unwrap() },
        Source::Hinted { first: offsets[1], hints: decode(&h2).unwrap() },
        Source::Read { first: offsets[2], bytes: &s3 },
    ];
    let from_records = recover(&read, 100);
    let from_hints = recover(&hinted, 100);
    assert_eq!(from_records.sequence_max, 6);
    assert_eq!(from_hints.sequence_max, 6);
    assert_eq!(from_records.records, 6);
    assert_eq!(from_hints.records, 6);
    let mut keys: Vec<&[u8]> = from_hints.live.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [&b"a"[..], b"c"]);
    for key in keys {
        let (r, h) = (from_records.live[key], from_hints.live[key]);
        assert_eq!(
            (r.location, r.etag, r.content_type, r.expires_at_ms),
            (h.location, h.etag, h.content_type, h.expires_at_ms)
        );
    }
    // Only the unhinted segment carries values.
    assert_eq!(from_hints.live[&b"a"[..]].value, Some(&b"a2"[..]));
    assert_eq!(from_hints.live[&b"c"[..]].value, None);
    assert_eq!(from_records.live[&b"c"[..]].value, Some(&b"c1"[..]));
}
