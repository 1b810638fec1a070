use super::*;
use crate::conditions::TagList;

const NOW: u64 = 1_700_000_000_000;

fn put(key: &str, value: &str) -> Op {
    put_with(key, value, None, Conditions::default())
}

fn put_with(key: &str, value: &str, ttl_ms: Option<u64>, conditions: Conditions) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        content_type: Bytes::from_static(b"text/plain"),
        ttl_ms,
        conditions,
    }
}

fn get(key: &str) -> Op {
    Op::Get { key: Bytes::copy_from_slice(key.as_bytes()), conditions: Conditions::default() }
}

fn delete(key: &str, conditions: Conditions) -> Op {
    Op::Delete { key: Bytes::copy_from_slice(key.as_bytes()), conditions }
}

fn if_match(tag: &str) -> Conditions {
    Conditions { if_match: Some(TagList::parse(tag.as_bytes())), if_none_match: None }
}

fn if_none_match(tag: &str) -> Conditions {
    Conditions { if_match: None, if_none_match: Some(TagList::parse(tag.as_bytes())) }
}

fn stored_etag(outcome: Outcome) -> Etag {
    match outcome {
        Outcome::Stored { etag, .. } => etag,
        other => panic!("expected Stored, got {other:?}"),
    }
}

#[test]
fn put_get_replace_delete() {
    let mut shard = KvShard::new(1 << 20);
    assert_eq!(shard.handle(NOW, get("k")), Outcome::NotFound);
    let first = shard.handle(NOW, put("k", "v1"));
    assert!(matches!(first, Outcome::Stored { created: true, .. }));
    let etag = stored_etag(first);
    assert_eq!(
        shard.handle(NOW, get("k")),
        Outcome::Value { value: Bytes::from_static(b"v1"), content_type: Bytes::from_static(b"text/plain"), etag }
    );
    assert!(matches!(shard.handle(NOW, put("k", "v2")), Outcome::Stored { created: false, .. }));
    assert_eq!(shard.keys(), 1);
    assert_eq!(shard.handle(NOW, delete("k", Conditions::default())), Outcome::Deleted);
    assert_eq!(shard.handle(NOW, delete("k", Conditions::default())), Outcome::NotFound);
    assert_eq!(shard.keys(), 0);
    assert_eq!(shard.bytes_held(), 0);
}

#[test]
fn conditional_writes_and_reads() {
    let mut shard = KvShard::new(1 << 20);
    let etag = stored_etag(shard.handle(NOW, put_with("k", "v", None, if_none_match("*"))));
    // Create-only fails once the key exists.
    assert_eq!(shard.handle(NOW, put_with("k", "w", None, if_none_match("*"))), Outcome::PreconditionFailed);
    // Compare-and-set.
    let tag = etag.to_string();
    assert_eq!(
        shard.handle(NOW, put_with("k", "w", None, if_match("\"0000000000000000\""))),
        Outcome::PreconditionFailed
    );
    let next = stored_etag(shard.handle(NOW, put_with("k", "w", None, if_match(&tag))));
    assert_ne!(next, etag);
    // Conditional GET.
    let cond = Op::Get { key: Bytes::from_static(b"k"), conditions: if_none_match(&next.to_string()) };
    assert_eq!(shard.handle(NOW, cond), Outcome::NotModified { etag: next });
    // Conditional DELETE.
    assert_eq!(shard.handle(NOW, delete("k", if_match(&tag))), Outcome::PreconditionFailed);
    assert_eq!(shard.handle(NOW, delete("k", if_match(&next.to_string()))), Outcome::Deleted);
    assert_eq!(shard.handle(NOW, delete("k", if_match("*"))), Outcome::PreconditionFailed);
}

#[test]
fn ttl_expires_on_read_and_by_sweep() {
    let mut shard = KvShard::new(1 << 20);
    shard.handle(NOW, put_with("short", "v", Some(1_000), Conditions::default()));
    shard.handle(NOW, put_with("long", "v", Some(60_000), Conditions::default()));
    shard.handle(NOW, put("forever", "v"));
    assert!(matches!(shard.handle(NOW + 999, get("short")), Outcome::Value { .. }));
    assert_eq!(shard.handle(NOW + 1_000, get("short")), Outcome::NotFound);
    assert_eq!(shard.keys(), 2);
    assert_eq!(shard.sweep_expired(NOW + 59_999, 100), 0);
    assert_eq!(shard.sweep_expired(NOW + 60_000, 100), 1);
    assert_eq!(shard.keys(), 1);
    // Overwriting without a TTL removes the expiry.
    shard.handle(NOW, put_with("k", "v", Some(10), Conditions::default()));
    shard.handle(NOW, put("k", "v"));
    assert!(matches!(shard.handle(NOW + 1_000_000, get("k")), Outcome::Value { .. }));
    // An expired key counts as absent for create-only writes.
    shard.handle(NOW, put_with("gone", "v", Some(10), Conditions::default()));
    assert!(matches!(
        shard.handle(NOW + 10, put_with("gone", "v", None, if_none_match("*"))),
        Outcome::Stored { created: true, .. }
    ));
}

#[test]
fn budget_refuses_instead_of_evicting() {
    let budget = 2 * (ENTRY_OVERHEAD_BYTES + 1 + 100 + 10);
    let mut shard = KvShard::new(budget);
    let value = "x".repeat(100);
    assert!(matches!(shard.handle(NOW, put("a", &value)), Outcome::Stored { .. }));
    assert!(matches!(shard.handle(NOW, put("b", &value)), Outcome::Stored { .. }));
    assert!(matches!(shard.handle(NOW, put("c", &value)), Outcome::InsufficientStorage { .. }));
    // Nothing was evicted to make room.
    assert!(matches!(shard.handle(NOW, get("a")), Outcome::Value { .. }));
    assert!(matches!(shard.handle(NOW, get("b")), Outcome::Value { .. }));
    // Replacing a key with a value of the same size still fits.
    assert!(matches!(shard.handle(NOW, put("a", &"y".repeat(100))), Outcome::Stored { created: false, .. }));
    // A larger replacement does not.
    assert!(matches!(shard.handle(NOW, put("a", &"y".repeat(101))), Outcome::InsufficientStorage { .. }));
    assert_eq!(shard.bytes_held(), budget);
}

#[test]
fn budget_pressure_reclaims_expired_entries() {
    let budget = 2 * (ENTRY_OVERHEAD_BYTES + 1 + 100 + 10);
    let mut shard = KvShard::new(budget);
    let value = "x".repeat(100);
    shard.handle(NOW, put_with("a", &value, Some(5), Conditions::default()));
    shard.handle(NOW, put("b", &value));
    assert!(matches!(shard.handle(NOW + 1, put("c", &value)), Outcome::InsufficientStorage { .. }));
    assert!(matches!(shard.handle(NOW + 5, put("c", &value)), Outcome::Stored { created: true, .. }));
    assert_eq!(shard.handle(NOW + 5, get("a")), Outcome::NotFound);
}

#[test]
fn accounting_returns_to_zero() {
    let mut shard = KvShard::new(1 << 30);
    for i in 0..1000u64 {
        let ttl = (i % 3 == 0).then_some(i);
        shard.handle(NOW, put_with(&format!("k{i}"), &"v".repeat(i as usize % 50), ttl, Conditions::default()));
    }
    for i in 0..1000u64 {
        shard.handle(NOW, put_with(&format!("k{}", i / 2), "replaced", None, Conditions::default()));
    }
    shard.sweep_expired(NOW + 10_000, usize::MAX);
    for i in 0..1000u64 {
        shard.handle(NOW + 10_000, delete(&format!("k{i}"), Conditions::default()));
    }
    assert_eq!(shard.keys(), 0);
    assert_eq!(shard.bytes_held(), 0);
}

#[test]
fn common_content_types_are_interned() {
    let json = interned(Bytes::copy_from_slice(b"application/json"));
    assert_eq!(&json[..], b"application/json");
    // A static Bytes points into the binary, not the heap copy we passed.
    assert_eq!(json.as_ptr(), CONTENT_TYPES_INTERNED[1].as_ptr());
    let rare = Bytes::copy_from_slice(b"application/vnd.example+json");
    assert_eq!(interned(rare.clone()).as_ptr(), rare.as_ptr());
}

#[test]
fn keys_spread_over_every_partition() {
    let mut shard = KvShard::new(1 << 30);
    for i in 0..64_000u32 {
        shard.handle(NOW, put(&format!("key-{i}"), "v"));
    }
    let sizes: Vec<usize> = shard.partitions.iter().map(HashTable::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), shard.keys());
    // 1000 per partition on average; binomial noise is about 31.
    assert!(sizes.iter().all(|&n| (850..1150).contains(&n)), "{sizes:?}");
}
