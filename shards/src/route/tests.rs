use super::*;

/// Golden values: these pin the routing scheme. If this test fails, stored
/// data would be re-homed on upgrade; do not "fix" the expected values.
#[test]
fn golden_values() {
    let cases: [(&str, u64, [u32; 5]); 5] = [
        ("", 0x2d06_8005_38d3_94c2, [0, 0, 0, 0, 52]),
        ("a", 0xe6c6_32b6_1e96_4e1f, [1, 1, 1, 1, 14]),
        ("user:42", 0x9fc1_e605_fa71_74aa, [1, 1, 1, 1, 25]),
        ("hello world", 0xd447_b1ea_40e6_988b, [0, 0, 3, 4, 33]),
        ("🔑", 0x6f2f_03b7_a480_a5de, [0, 2, 2, 2, 32]),
    ];
    for (key, hash, shards) in cases {
        assert_eq!(key_hash(key.as_bytes()), hash, "hash of {key:?}");
        let got = [2u32, 3, 4, 8, 64].map(|n| shard_for_hash(hash, n));
        assert_eq!(got, shards, "owners of {key:?} for 2, 3, 4, 8, 64 shards");
    }
}

#[test]
fn one_shard_owns_everything() {
    for i in 0..1000u32 {
        assert_eq!(shard_for_key(&i.to_le_bytes(), 1), 0);
    }
}

/// A million keys spread over 2..=64 shards: every shard's count is within 2%
/// of the mean for up to 16 shards; beyond that the binomial noise of a
/// million samples alone is about 1% per shard, so the bound is 5 standard
/// deviations, and the chi-square statistic must be plausible.
#[test]
fn uniform_over_shard_counts() {
    const KEYS: u32 = 1_000_000;
    let hashes: Vec<u64> = (0..KEYS).map(|i| key_hash(format!("key-{i}").as_bytes())).collect();
    for shard_count in 2..=64u32 {
        let mut counts = vec![0u32; shard_count as usize];
        for &h in &hashes {
            counts[shard_for_hash(h, shard_count) as usize] += 1;
        }
        let mean = f64::from(KEYS) / f64::from(shard_count);
        let deviation_max = counts.iter().map(|&c| (f64::from(c) - mean).abs() / mean).fold(0.0, f64::max);
        let sigma = (mean * (1.0 - 1.0 / f64::from(shard_count))).sqrt() / mean;
        let bound = if shard_count <= 16 { 0.02 } else { 5.0 * sigma };
        assert!(deviation_max <= bound, "{shard_count} shards: max deviation {deviation_max:.4} > {bound:.4}");
        let chi_square: f64 = counts.iter().map(|&c| (f64::from(c) - mean).powi(2) / mean).sum();
        let dof = f64::from(shard_count - 1);
        // Mean dof, standard deviation sqrt(2 dof): 5 standard deviations.
        assert!(chi_square <= dof + 5.0 * (2.0 * dof).sqrt(), "{shard_count} shards: chi-square {chi_square:.1}");
    }
}

/// Growing from n to n+1 shards moves only keys that land on the new shard.
#[test]
fn growth_moves_keys_only_to_the_new_shard() {
    for i in 0..100_000u32 {
        let h = key_hash(&i.to_le_bytes());
        for n in 1..32u32 {
            let before = shard_for_hash(h, n);
            let after = shard_for_hash(h, n + 1);
            assert!(after == before || after == n, "key {i}: {before} -> {after} at {n}->{}", n + 1);
        }
    }
}

#[test]
fn queued_writes_live_with_the_cache_key_they_write_to() {
    let hash = key_hash(b"api.test/items/1");
    let key = format!("\0w/{hash:016x}-{:016x}", 7);
    for shards in [1, 2, 3, 8, 64] {
        assert_eq!(shard_for_stored_key(key.as_bytes(), shards), shard_for_hash(hash, shards));
        assert_eq!(shard_for_stored_key(b"user:42", shards), shard_for_key(b"user:42", shards));
        // A malformed embedded hash falls back to the key's own hash.
        assert_eq!(shard_for_stored_key(b"\0w/zz", shards), shard_for_key(b"\0w/zz", shards));
    }
}
