use super::*;

#[test]
fn identities_of_keys_and_addresses_never_collide_by_construction() {
    let address: IpAddr = "10.0.0.1".parse().unwrap();
    let octets = [10u8, 0, 0, 1];
    assert_ne!(identity_of_key(&octets), identity_of_address(address), "the namespaces differ");
    assert_eq!(identity_of_key(b"k"), identity_of_key(b"k"));
    assert_ne!(identity_of_address("::1".parse().unwrap()), identity_of_address("127.0.0.1".parse().unwrap()));
}

#[test]
fn lease_sizes_and_lifetimes_are_bounded() {
    let policy = |limit, window_ms| Policy::new(limit, window_ms).unwrap();
    for (limit, shards, expect) in [(100, 2, 3), (1, 8, 1), (1_000_000, 1, 256), (16, 1, 1)] {
        assert_eq!(lease_permits(policy(limit, 1000), shards), expect, "{limit}/{shards}");
    }
    assert_eq!(lease_lifetime_ms(policy(10, 1)), 10);
    assert_eq!(lease_lifetime_ms(policy(10, 8_000)), 1000);
    assert_eq!(lease_lifetime_ms(policy(10, 800)), 100);
}

#[test]
fn state_budgets_in_slots_and_leases() {
    assert_eq!(slots_per_shard(0, 4), 1);
    assert_eq!(slots_per_shard(SLOT_BYTES as u64 * 10, 2), 5);
    assert_eq!(leases_per_core(5, 4096), 8192);
    assert_eq!(leases_per_core(1 << 30, 4096), 65_536);
    assert_eq!(leases_per_core(10_000, 4096), 10_000);
}
