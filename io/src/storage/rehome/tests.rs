use std::collections::BTreeMap;

use shardgate_shards::record::{Record, RecordOp};

use super::*;
use crate::storage::segments::shards_file_read;
use shardgate_shards::route::shard_for_key;

const NOW_MS: u64 = 1_800_000_000_000;

fn put<'a>(key: &'a str, value: &'a str, sequence: u64, expires_at_ms: Option<u64>) -> Record<'a> {
    Record {
        op: RecordOp::Put,
        sequence,
        timestamp_ms: NOW_MS - 1000,
        expires_at_ms,
        key: key.as_bytes(),
        content_type: b"text/plain",
        value: value.as_bytes(),
    }
}

/// An old layout of `from` shards: 200 keys, each in its owner's log, with
/// overwrites, deletes and expired keys. Returns what must survive.
fn old_layout(dir: &Path, from: u32) -> BTreeMap<String, String> {
    let mut logs: Vec<Vec<u8>> = vec![Vec::new(); from as usize];
    let mut expected = BTreeMap::new();
    for i in 0..200u64 {
        let key = format!("key-{i}");
        let owner = shard_for_key(key.as_bytes(), from) as usize;
        let first = format!("first {i}");
        put(&key, &first, i * 3, None).encode(&mut logs[owner]);
        match i % 4 {
            0 => {
                let second = format!("second {i}");
                put(&key, &second, i * 3 + 1, Some(NOW_MS + 60_000)).encode(&mut logs[owner]);
                expected.insert(key, second);
            }
            1 => {
                let delete =
                    Record { op: RecordOp::Delete, content_type: b"", value: b"", ..put(&key, "", i * 3 + 1, None) };
                delete.encode(&mut logs[owner]);
            }
            2 => put(&key, "expired", i * 3 + 1, Some(NOW_MS - 1)).encode(&mut logs[owner]),
            _ => {
                expected.insert(key, first);
            }
        }
    }
    for (shard, bytes) in logs.iter().enumerate() {
        let shard_dir = shard_dir(dir, shard as u32);
        fs::create_dir_all(&shard_dir).unwrap();
        // Two segments per shard, split at a record boundary.
        let split = record::scan(bytes, |_, _| {}).valid_bytes / 2;
        let mut boundary = 0;
        record::scan(bytes, |offset, _| {
            if offset <= split {
                boundary = offset;
            }
        });
        fs::write(shard_dir.join(segment_name(0)), &bytes[..boundary]).unwrap();
        fs::write(shard_dir.join(segment_name(boundary as u64)), &bytes[boundary..]).unwrap();
    }
    shards_file_write(dir, from).unwrap();
    expected
}

/// Checks the data directory holds exactly `expected`, each key only in
/// its owner's shard under `to` shards, and nothing else.
fn assert_layout(dir: &Path, to: u32, expected: &BTreeMap<String, String>) {
    assert_eq!(shards_file_read(dir).unwrap(), Some(to));
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = (0..to).map(|s| format!("shard-{s:03}")).collect();
    want.push("shards".to_string());
    assert_eq!(names, want, "no scratch directories left");
    let mut found = BTreeMap::new();
    for shard in 0..to {
        let found_segments = segments(&shard_dir(dir, shard)).unwrap();
        let contents: Vec<Vec<u8>> = found_segments.iter().map(|(_, p)| fs::read(p).unwrap()).collect();
        let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        let recovered = record::recover(&slices, NOW_MS);
        for located in recovered.live.values() {
            let key = String::from_utf8(located.record.key.to_vec()).unwrap();
            assert_eq!(shard_for_key(key.as_bytes(), to), shard, "{key} lives with its owner");
            let value = String::from_utf8(located.record.value.to_vec()).unwrap();
            assert!(found.insert(key, value).is_none(), "a key in two shards");
        }
    }
    assert_eq!(&found, expected);
}

#[test]
fn rehoming_moves_every_live_key_to_its_new_owner() {
    for (from, to) in [(2, 3), (3, 1), (1, 4), (4, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let expected = old_layout(dir.path(), from);
        assert_eq!(expected.len(), 100);
        // Small segments: the new shards roll.
        let rehomed = rehome(dir.path(), from, to, 1024, NOW_MS).unwrap();
        assert_eq!(rehomed.keys, 100);
        assert_layout(dir.path(), to, &expected);
        // Records move unchanged: expiry stays absolute. 1 KiB segments roll.
        let mut segment_count = 0;
        for shard in 0..to {
            for (_, path) in segments(&shard_dir(dir.path(), shard)).unwrap() {
                segment_count += 1;
                let bytes = fs::read(path).unwrap();
                record::scan(&bytes, |_, record| {
                    let i: u64 = std::str::from_utf8(&record.key[4..]).unwrap().parse().unwrap();
                    let ttl = if i.is_multiple_of(4) { Some(NOW_MS + 60_000) } else { None };
                    assert_eq!(record.expires_at_ms, ttl, "key-{i}");
                });
            }
        }
        assert!(segment_count > to as usize, "{segment_count} segments for {to} shards");
        assert!(!finish(dir.path()).unwrap(), "nothing left to finish");
    }
}

#[test]
fn a_crash_before_the_commit_point_keeps_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let expected = old_layout(dir.path(), 2);
    fs::create_dir_all(dir.path().join(STAGING).join("shard-000")).unwrap();
    fs::write(dir.path().join(STAGING).join("shard-000").join(segment_name(0)), b"half written").unwrap();
    assert!(!finish(dir.path()).unwrap());
    assert_layout(dir.path(), 2, &expected);
}

#[test]
fn a_crash_after_the_commit_point_is_completed_at_every_step() {
    // Crash points after the commit: before any move, after one old shard
    // moved aside, after the phase turned to `new`, after one new shard
    // moved in, after the shards file changed, inside the removal of
    // `rehome.old`, inside a removal of `rehome.ready` that lost its phase
    // file first (what an interrupted `remove_dir_all` leaves), and inside
    // the removal of the trash.
    for crash_point in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let expected = old_layout(data, 2);
        stage(data, 2, 3, 64 << 20, NOW_MS).unwrap();
        let ready = data.join(READY);
        let old = data.join(OLD);
        if crash_point >= 1 {
            fs::create_dir_all(&old).unwrap();
            fs::rename(data.join("shard-000"), old.join("shard-000")).unwrap();
        }
        if crash_point >= 2 {
            fs::rename(data.join("shard-001"), old.join("shard-001")).unwrap();
            write_atomically(&ready, PHASE, b"new\n").unwrap();
        }
        if crash_point >= 3 {
            fs::rename(ready.join("shard-001"), data.join("shard-001")).unwrap();
        }
        if crash_point >= 4 {
            fs::rename(ready.join("shard-000"), data.join("shard-000")).unwrap();
            fs::rename(ready.join("shard-002"), data.join("shard-002")).unwrap();
            shards_file_write(data, 3).unwrap();
        }
        if crash_point >= 5 {
            fs::remove_dir_all(old.join("shard-000")).unwrap();
        }
        if crash_point >= 6 {
            fs::remove_dir_all(&old).unwrap();
            fs::remove_file(ready.join(PHASE)).unwrap();
        }
        if crash_point == 7 {
            fs::rename(&ready, data.join(TRASH)).unwrap();
            fs::remove_file(data.join(TRASH).join("shards")).unwrap();
        }
        let completed = finish(data).unwrap();
        assert!(completed || crash_point == 7, "crash point {crash_point}");
        assert_layout(data, 3, &expected);
    }
}
