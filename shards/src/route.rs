//! Key → owner shard.
//!
//! Two steps, both fixed forever (changing either re-homes every stored key):
//! 1. [`key_hash`]: XXH3-64 with seed 0 over the raw (percent-decoded) key
//!    bytes. XXH3 is a published, versioned algorithm with implementations in
//!    every major language, so an external router (HAProxy Lua, a client SDK)
//!    can compute the same value.
//! 2. [`shard_for_hash`]: jump consistent hash (Lamping & Veach, 2014) of that
//!    value onto `shard_count` buckets. When the shard count changes from n to
//!    n+1, only 1/(n+1) of the keys move, which keeps re-homing after a
//!    `--shards` change cheap.
//!
//! The golden values in the tests pin both steps.

/// Returns the stable 64-bit hash of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Returns the owner shard in `0..shard_count` of a key hash.
///
/// Jump consistent hash: deterministic across platforms because the only
/// floating-point step divides exactly representable integers below 2^53.
pub fn shard_for_hash(hash: u64, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard_count must be positive");
    let mut key = hash;
    let mut bucket: i64 = -1;
    let mut jump: i64 = 0;
    while jump < i64::from(shard_count) {
        bucket = jump;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        jump = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    let shard = bucket as u32;
    assert!(shard < shard_count);
    shard
}

/// Returns the owner shard of a key.
pub fn shard_for_key(key: &[u8], shard_count: u32) -> u32 {
    shard_for_hash(key_hash(key), shard_count)
}

/// Returns the owner shard of a stored key: [`shard_for_key`], except that
/// a queued write (see [`crate::queued`]) belongs to the owner of the
/// cache key it writes to, so that re-homing keeps a key's writes together
/// and in order.
pub fn shard_for_stored_key(key: &[u8], shard_count: u32) -> u32 {
    match crate::queued::embedded_hash(key) {
        Some(hash) => shard_for_hash(hash, shard_count),
        None => shard_for_key(key, shard_count),
    }
}

#[cfg(test)]
mod tests;
