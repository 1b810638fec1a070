use super::*;

fn put<'a>(sequence: u64, key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    Record {
        op: RecordOp::Put,
        sequence,
        timestamp_ms: 1_700_000_000_000 + sequence,
        expires_at_ms: None,
        key,
        content_type: b"text/plain",
        value,
    }
}

fn delete(sequence: u64, key: &[u8]) -> Record<'_> {
    Record {
        op: RecordOp::Delete,
        sequence,
        timestamp_ms: 1_700_000_000_000,
        expires_at_ms: None,
        key,
        content_type: b"",
        value: b"",
    }
}

fn encode_all(records: &[Record<'_>]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    for record in records {
        starts.push(bytes.len());
        record.encode(&mut bytes);
    }
    (bytes, starts)
}

/// A deterministic xorshift stream for garbage and random inputs.
fn noise(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn round_trips() {
    let expiring = Record { expires_at_ms: Some(1_800_000_000_000), ..put(7, b"session", b"token") };
    for record in [put(1, b"k", b"v"), put(2, b"k", b""), expiring, delete(9, b"gone")] {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(bytes.len(), record.encoded_bytes());
        assert_eq!(decode(&bytes), Ok((record, bytes.len())));
    }
}

#[test]
fn the_layout_is_pinned() {
    let mut bytes = Vec::new();
    put(0x0102_0304_0506_0708, b"key", b"value").encode(&mut bytes);
    assert_eq!(bytes.len(), 48 + 3 + 10 + 5);
    assert_eq!(&bytes[0..4], &66u32.to_le_bytes());
    assert_eq!(&bytes[8..12], b"SGLR");
    assert_eq!((bytes[12], bytes[13]), (1, 1));
    assert_eq!(&bytes[14..16], &3u16.to_le_bytes());
    assert_eq!(&bytes[16..18], &10u16.to_le_bytes());
    assert_eq!(&bytes[20..24], &5u32.to_le_bytes());
    assert_eq!(&bytes[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&bytes[40..48], &[0; 8], "no expiry is 0");
    assert_eq!(&bytes[48..], b"keytext/plainvalue");
    assert_eq!(&bytes[4..8], &crc32c::crc32c(&bytes[8..]).to_le_bytes());
}

#[test]
fn every_single_bit_flip_is_caught() {
    let mut bytes = Vec::new();
    Record { expires_at_ms: Some(42), ..put(3, b"some-key", b"some value bytes") }.encode(&mut bytes);
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[byte] ^= 1 << bit;
            assert!(decode(&flipped).is_err(), "flip of bit {bit} in byte {byte} went unnoticed");
        }
    }
}

#[test]
fn truncation_at_every_byte_of_the_last_record() {
    let records = [put(1, b"a", b"1"), put(2, b"b", b"22"), put(3, b"c", b"333")];
    let (bytes, starts) = encode_all(&records);
    let last = starts[2];
    for end in last..bytes.len() {
        let scanned = scan(&bytes[..end], |_, _| {});
        assert_eq!((scanned.valid_bytes, scanned.records), (last, 2), "cut at {end}");
        assert_eq!(scanned.stop.is_none(), end == last, "cut at {end}: a clean end only at a record boundary");
        if end > last {
            assert!(matches!(scanned.stop, Some(DecodeError::Truncated { .. })), "cut at {end}: {:?}", scanned.stop);
        }
    }
    let whole = scan(&bytes, |_, _| {});
    assert_eq!((whole.valid_bytes, whole.records, whole.stop), (bytes.len(), 3, None));
}

#[test]
fn garbage_after_the_records_is_not_served() {
    let (mut bytes, _) = encode_all(&[put(1, b"a", b"1"), delete(2, b"a"), put(3, b"b", b"2")]);
    let valid = bytes.len();
    for seed in 1..200 {
        let mut segment = bytes.clone();
        segment.extend_from_slice(&noise(seed, 1 + seed as usize % 300));
        let mut seen = 0;
        let scanned = scan(&segment, |_, _| seen += 1);
        assert_eq!((scanned.valid_bytes, seen), (valid, 3), "seed {seed}");
        assert_eq!(scanned.discarded_bytes(segment.len()), segment.len() - valid);
    }
    // A run of zeros (a preallocated or zero-filled tail) is refused too.
    bytes.extend_from_slice(&[0; 64]);
    assert_eq!(scan(&bytes, |_, _| {}).stop, Some(DecodeError::BadLength(0)));
}

#[test]
fn a_record_split_across_segment_ends_is_caught_on_both_sides() {
    let (bytes, starts) = encode_all(&[put(1, b"a", b"first"), put(2, b"b", b"second")]);
    let split = starts[1] + 20;
    let (older, newer) = bytes.split_at(split);
    let recovered = recover(&[older, newer], 0);
    // The older segment is sealed: its broken end is skipped, not cut off.
    assert_eq!(
        (recovered.scans[0].valid_bytes, recovered.scans[0].skipped_bytes),
        (older.len(), older.len() - starts[1])
    );
    assert!(matches!(recovered.scans[0].stop, Some(DecodeError::Truncated { .. })));
    assert_eq!((recovered.scans[1].valid_bytes, recovered.scans[1].records), (0, 0));
    assert_eq!(recovered.live.len(), 1);
    assert_eq!(recovered.live[&b"a"[..]].record.value, b"first");
}

#[test]
fn recovery_keeps_the_newest_live_version() {
    let old = [put(1, b"a", b"1"), put(2, b"b", b"1"), put(3, b"c", b"1")];
    let new = [
        put(4, b"a", b"2"),
        delete(5, b"b"),
        Record { expires_at_ms: Some(1_000), ..put(6, b"c", b"ttl") },
        Record { expires_at_ms: Some(5_000), ..put(7, b"d", b"ttl") },
        delete(8, b"never-existed"),
    ];
    let (old_bytes, _) = encode_all(&old);
    let (new_bytes, new_starts) = encode_all(&new);
    let recovered = recover(&[&old_bytes, &new_bytes], 2_000);
    let mut keys: Vec<&[u8]> = recovered.live.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [&b"a"[..], b"d"]);
    assert_eq!(recovered.live[&b"a"[..]], Located { segment: 1, offset: new_starts[0], record: new[0] });
    assert_eq!(recovered.sequence_max, 8);
    // Later, d has expired as well.
    assert_eq!(recover(&[&old_bytes, &new_bytes], 5_000).live.len(), 1);
}

#[test]
fn decode_never_panics() {
    let mut valid = Vec::new();
    put(1, b"key", b"value").encode(&mut valid);
    for end in 0..valid.len() {
        assert!(decode(&valid[..end]).is_err());
    }
    for seed in 1..5_000 {
        let mut bytes = noise(seed, (seed % 200) as usize);
        if seed % 3 == 0 && bytes.len() >= 4 {
            // Plausible lengths reach the checksum and field checks.
            let length = (bytes.len() as u32).max(49);
            bytes[0..4].copy_from_slice(&length.to_le_bytes());
        }
        let _ = decode(&bytes);
        let _ = scan(&bytes, |_, _| {});
    }
}

#[test]
#[should_panic(expected = "key length")]
fn encoding_an_empty_key_is_a_bug() {
    put(1, b"", b"v").encode(&mut Vec::new());
}

#[test]
fn a_sealed_segment_loses_only_its_bad_records() {
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    for (sequence, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        starts.push(bytes.len());
        put(sequence, key.as_bytes(), b"value").encode(&mut bytes);
    }
    // A flipped bit inside "b", and garbage overwriting the start of "d".
    let mut damaged = bytes.clone();
    damaged[starts[1] + HEADER_BYTES] ^= 0x40;
    damaged[starts[3]..starts[3] + 4].copy_from_slice(b"junk");
    let mut keys = Vec::new();
    let scanned = scan_sealed(&damaged, |_, record| keys.push(record.key.to_vec()));
    assert_eq!(keys, [b"a".to_vec(), b"c".to_vec()]);
    assert_eq!((scanned.skipped_ranges, scanned.valid_bytes), (2, damaged.len()));
    assert_eq!(scanned.skipped_bytes, (starts[2] - starts[1]) + (damaged.len() - starts[3]));
    assert!(matches!(scanned.stop, Some(DecodeError::BadChecksum)));
    // The last segment keeps its torn-tail rule: it stops at the first bad record.
    let recovered = recover(&[&damaged, &damaged], 0);
    assert_eq!(recovered.scans[0].records, 2);
    assert_eq!((recovered.scans[1].records, recovered.scans[1].valid_bytes), (1, starts[1]));
    let whole = scan_sealed(&bytes, |_, _| {});
    assert_eq!((whole.records, whole.skipped_ranges, whole.stop), (4, 0, None));
}
