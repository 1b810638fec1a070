//! The arithmetic around the rate limiter (docs/spec.md §4):
//! who a client is, how large and how long-lived a lease is, how many
//! identity windows and leases a state budget holds.
//!
//! A client's identity is the routing hash (XXH3-64) of its API key, or of
//! its address's octets (4 or 16), XORed with a namespace constant so that
//! an API key can never name the same client as an address. It is stable,
//! like the key hash: a shared limiter in front of several nodes may rely
//! on it. Its owner shard (`route::shard_for_hash`) holds its windows.

use std::net::IpAddr;

use crate::ratelimit::{Policy, SLOT_BYTES, SUB_WINDOWS};
use crate::route::key_hash;

/// Namespaces of client identities ("key:" and "ip:" in ASCII).
const IDENTITY_NAMESPACE_KEY: u64 = 0x6b65_793a;
const IDENTITY_NAMESPACE_ADDRESS: u64 = 0x0069_703a;
/// Leases a core holds at most, whatever the state budget.
const LEASES_PER_CORE_MAX: usize = 65_536;
/// A lease is a 1/LEASE_SHARE_DIVISOR share of the limit per core, so that
/// permits parked in leases stay a small part of the limit.
const LEASE_SHARE_DIVISOR: u32 = 16;
const LEASE_PERMITS_MAX: u32 = 256;
const LEASE_LIFETIME_MS_MIN: u64 = 10;
const LEASE_LIFETIME_MS_MAX: u64 = 1000;

/// The identity of a client that names itself with an API key.
pub fn identity_of_key(api_key: &[u8]) -> u64 {
    key_hash(api_key) ^ IDENTITY_NAMESPACE_KEY
}

/// The identity of a client known by its address.
pub fn identity_of_address(address: IpAddr) -> u64 {
    let hash = match address {
        IpAddr::V4(address) => key_hash(&address.octets()),
        IpAddr::V6(address) => key_hash(&address.octets()),
    };
    hash ^ IDENTITY_NAMESPACE_ADDRESS
}

/// The identity of a client: its API key when it sends one, else its
/// address; None when neither is known.
pub fn identity_of(api_key: Option<&[u8]>, address: Option<IpAddr>) -> Option<u64> {
    match (api_key, address) {
        (Some(key), _) => Some(identity_of_key(key)),
        (None, Some(address)) => Some(identity_of_address(address)),
        (None, None) => None,
    }
}

/// Identity windows one shard may hold within `state_bytes` for all shards.
pub fn slots_per_shard(state_bytes: u64, shard_count: u32) -> usize {
    ((state_bytes / u64::from(shard_count.max(1))) as usize / SLOT_BYTES).max(1)
}

/// Leases a core may hold: room for every lease request it can have in
/// flight (`in_flight_max`), and for as many identities as a shard tracks.
pub fn leases_per_core(slots_per_shard: usize, in_flight_max: usize) -> usize {
    slots_per_shard.clamp(2 * in_flight_max, LEASES_PER_CORE_MAX.max(2 * in_flight_max))
}

/// Most permits one lease asks for: a small share of the limit per core.
/// Leases start at one permit and grow toward this while they run out.
pub fn lease_permits(policy: Policy, shard_count: u32) -> u32 {
    (policy.limit / (LEASE_SHARE_DIVISOR * shard_count.max(1))).clamp(1, LEASE_PERMITS_MAX)
}

/// How long a lease's permits may be spent: one bucket of the window, so
/// permits counted at grant time are spent in about the bucket that counts them.
pub fn lease_lifetime_ms(policy: Policy) -> u64 {
    (policy.window_ms / (SUB_WINDOWS as u64 - 1)).clamp(LEASE_LIFETIME_MS_MIN, LEASE_LIFETIME_MS_MAX)
}

#[cfg(test)]
mod tests;
