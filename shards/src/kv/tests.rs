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

fn at(offset: u64) -> Location {
    Location { offset, bytes: 200 }
}

fn value_of(outcome: Outcome) -> Option<Bytes> {
    match outcome {
        Outcome::Value { value, .. } => Some(value),
        _ => None,
    }
}

#[test]
fn values_past_the_budget_are_evicted_only_once_durable() {
    let mut shard = KvShard::new(1000);
    let value = "x".repeat(100);
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        assert!(matches!(shard.handle_at(NOW, put(key, &value), at(200 * i as u64)), Outcome::Stored { .. }));
    }
    // Nothing is durable yet: nothing may go, the cache runs over.
    assert_eq!(shard.bytes_held(), 1200);
    assert_eq!(shard.evictions(), 0);
    shard.set_durable_end(200 * 12);
    shard.handle_at(NOW, put("last", &value), at(200 * 12));
    assert!(shard.bytes_held() <= 1000, "{}", shard.bytes_held());
    assert_eq!(shard.evictions(), 3);
    assert_eq!(shard.keys(), 13, "evicting a value keeps its key");
    // An evicted value is read back from its record and cached again.
    let cold: Vec<&String> = keys.iter().filter(|k| value_of(shard.handle(NOW, get(k))).is_none()).collect();
    assert_eq!(cold.len(), 3);
    let key = cold[0];
    let Outcome::Cold { location, etag } = shard.handle(NOW, get(key)) else { panic!("cold") };
    // Conditional reads need no value.
    let tag = String::from_utf8(etag.encode().to_vec()).unwrap();
    assert_eq!(shard.get(NOW, key.as_bytes(), &if_none_match(&tag)), Outcome::NotModified { etag });
    assert!(shard.fill(key.as_bytes(), location, Bytes::from(value.clone()), Bytes::from_static(b"text/plain")));
    assert_eq!(value_of(shard.handle(NOW, get(key))), Some(Bytes::from(value.clone())));
    assert!(shard.bytes_held() <= 1000);
}

#[test]
fn a_stale_fill_is_ignored() {
    let mut shard = KvShard::new(100);
    shard.handle_at(NOW, put("a", &"x".repeat(100)), at(0));
    shard.set_durable_end(1000);
    shard.handle_at(NOW, put("b", &"y".repeat(100)), at(200));
    let Outcome::Cold { location, .. } = shard.handle(NOW, get("a")) else { panic!("a was evicted") };
    // The key is overwritten before the read comes back: the old value must not return.
    shard.handle_at(NOW, put("a", "new"), at(400));
    assert!(!shard.fill(b"a", location, Bytes::from_static(b"old"), Bytes::from_static(b"text/plain")));
    assert_eq!(value_of(shard.handle(NOW, get("a"))), Some(Bytes::from_static(b"new")));
    // Records replaced or deleted are reported dead, once each.
    let mut dead = Vec::new();
    shard.drain_dead(&mut dead);
    assert_eq!(dead, vec![at(0)]);
    shard.handle(NOW, delete("a", Conditions::default()));
    shard.drain_dead(&mut dead);
    assert_eq!(dead, vec![at(0), at(400)]);
}

#[test]
fn entries_never_logged_are_never_evicted() {
    let mut shard = KvShard::new(10);
    shard.set_durable_end(u64::MAX);
    for i in 0..10 {
        shard.handle(NOW, put(&format!("k{i}"), "0123456789"));
    }
    assert_eq!(shard.evictions(), 0);
    assert!((0..10).all(|i| value_of(shard.handle(NOW, get(&format!("k{i}")))).is_some()));
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
    let slot = CONTENT_TYPES_INTERNED.iter().position(|t| *t == b"application/json").expect("interned");
    assert_eq!(json.as_ptr(), CONTENT_TYPES_INTERNED[slot].as_ptr());
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

#[test]
fn uncommon_content_types_count_against_the_budget_and_leave_with_their_value() {
    let mut shard = KvShard::new(10_000);
    let content_type = Bytes::from(format!("application/x-{}", "t".repeat(3_000)));
    let typed = |key: &str| Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        content_type: content_type.clone(),
        ttl_ms: None,
        conditions: Conditions::default(),
    };
    for i in 0..10u64 {
        assert!(matches!(shard.handle_at(NOW, typed(&format!("k{i}")), at(100 * i)), Outcome::Stored { .. }));
        shard.set_durable_end(100 * (i + 1));
    }
    // Ten 3 KiB content types on one-byte values: the budget evicts values,
    // and an evicted entry keeps no content type of its own.
    assert!(shard.bytes_held() <= 10_000, "{}", shard.bytes_held());
    assert!(shard.evictions() >= 6, "{}", shard.evictions());
    let cold = (0..10).find_map(|i| match shard.handle(NOW, get(&format!("k{i}"))) {
        Outcome::Cold { location, .. } => Some((i, location)),
        _ => None,
    });
    let (i, location) = cold.expect("an evicted entry");
    assert!(shard.fill(format!("k{i}").as_bytes(), location, Bytes::from_static(b"v"), content_type.clone()));
    let Outcome::Value { content_type: back, .. } = shard.handle(NOW, get(&format!("k{i}"))) else { panic!("filled") };
    assert_eq!(back, content_type);
}
