//! Fuzzes the log's record and hint-file decoding (`shardgate_shards::record`,
//! `shardgate_shards::hint`): disk bytes are never trusted.
//!
//! Checked: no panic on any bytes; a record that decodes re-encodes to the
//! same bytes; a scan stops inside the input; recovery from the bytes as a
//! segment and, when they decode as one, as a hint file never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_shards::{hint, record};

fuzz_target!(|data: &[u8]| {
    if let Ok((decoded, length)) = record::decode(data) {
        assert!(length <= data.len());
        let mut encoded = Vec::new();
        decoded.encode(&mut encoded);
        assert_eq!(&encoded[..], &data[..length], "decode and encode disagree");
    }
    let scan = record::scan(data, |offset, found| assert!(offset + found.encoded_bytes() <= data.len()));
    assert!(scan.valid_bytes <= data.len());
    let _ = record::recover(&[data, data], 1_000);
    let mut sources = vec![hint::Source::Read { first: 0, bytes: data }];
    if let Ok(hints) = hint::decode(data) {
        sources.push(hint::Source::Hinted { first: data.len() as u64, hints });
    }
    let _ = hint::recover(&sources, 1_000);
});
