//! Fuzzes the purge notices nodes send each other over NATS
//! (`shardgate_shards::cluster::Notice`): bytes from the network.
//!
//! Checked: no panic; what decodes encodes back to the same bytes (the
//! format has one encoding per notice), and a truncated notice never
//! decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_shards::cluster::Notice;

fuzz_target!(|data: &[u8]| {
    let Some(notice) = Notice::decode(data) else {
        return;
    };
    let encoded = notice.encode().expect("a decoded notice fits its own format");
    assert_eq!(encoded, data);
    assert_eq!(Notice::decode(&data[..data.len() - 1]), None);
});
