//! The surrogate-key index of one shard: which stored objects carry each
//! tag (`Surrogate-Key: a b`, Fastly; `Cache-Tag: a,b`, Cloudflare), so a
//! purge by tag finds exactly them. Tags match byte for byte: no patterns
//! (a regex purge that deletes other tags' objects is a bug this design
//! cannot have).
//!
//! Bounded by its own byte budget: an object whose tags would not fit is
//! refused by the cache rather than stored unindexed, since a purge could
//! never reach it.

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};

/// Bytes charged for each distinct tag besides its own bytes.
const TAG_OVERHEAD_BYTES: u64 = 64;
/// Bytes charged for each (tag, object) pair.
const MEMBER_BYTES: u64 = 16;
/// Tags one response may carry; more are not indexed and it is not stored.
pub const TAGS_PER_OBJECT_MAX: usize = 64;
/// Longest tag kept.
pub const TAG_BYTES_MAX: usize = 1024;

/// Tags → the objects (by key hash) carrying them.
pub struct TagIndex {
    by_tag: HashMap<Bytes, HashSet<u64>>,
    bytes: u64,
    bytes_max: u64,
}

impl TagIndex {
    pub fn new(bytes_max: u64) -> TagIndex {
        TagIndex { by_tag: HashMap::new(), bytes: 0, bytes_max }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Indexes `hash` under each of `tags`. False, indexing nothing, when
    /// they do not fit the budget or break a per-object bound.
    pub fn insert(&mut self, hash: u64, tags: &[Bytes]) -> bool {
        if tags.is_empty() {
            return true;
        }
        if tags.len() > TAGS_PER_OBJECT_MAX || tags.iter().any(|t| t.len() > TAG_BYTES_MAX) {
            return false;
        }
        let added: u64 = tags
            .iter()
            .map(|tag| {
                MEMBER_BYTES + if self.by_tag.contains_key(tag) { 0 } else { tag.len() as u64 + TAG_OVERHEAD_BYTES }
            })
            .sum();
        if self.bytes + added > self.bytes_max {
            return false;
        }
        for tag in tags {
            let members = self.by_tag.entry(tag.clone()).or_insert_with(|| {
                self.bytes += tag.len() as u64 + TAG_OVERHEAD_BYTES;
                HashSet::new()
            });
            if members.insert(hash) {
                self.bytes += MEMBER_BYTES;
            }
        }
        true
    }

    /// Forgets `hash` under each of `tags`.
    pub fn remove(&mut self, hash: u64, tags: &[Bytes]) {
        for tag in tags {
            let Some(members) = self.by_tag.get_mut(tag) else { continue };
            if members.remove(&hash) {
                self.bytes -= MEMBER_BYTES;
            }
            if members.is_empty() {
                self.by_tag.remove(tag);
                self.bytes -= tag.len() as u64 + TAG_OVERHEAD_BYTES;
            }
        }
    }

    /// The objects carrying any of `tags`, each once.
    pub fn objects(&self, tags: &[Bytes]) -> Vec<u64> {
        let mut found: HashSet<u64> = HashSet::new();
        for tag in tags {
            if let Some(members) = self.by_tag.get(tag) {
                found.extend(members);
            }
        }
        found.into_iter().collect()
    }
}

/// The tags of a response: `Surrogate-Key` (space-separated) and
/// `Cache-Tag` (comma-separated), every line, each tag once.
pub fn response_tags(surrogate_key: Option<&[u8]>, cache_tag: Option<&[u8]>) -> Vec<Bytes> {
    let spaced = surrogate_key.into_iter().flat_map(|v| v.split(|b| b.is_ascii_whitespace()));
    let listed = cache_tag.into_iter().flat_map(|v| v.split(|&b| b == b','));
    let mut tags: Vec<Bytes> = Vec::new();
    for tag in spaced.chain(listed).map(super::trim).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|t| &t[..] == tag) {
            tags.push(Bytes::copy_from_slice(tag));
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&'static str]) -> Vec<Bytes> {
        list.iter().map(|t| Bytes::from_static(t.as_bytes())).collect()
    }

    #[test]
    fn purges_find_exactly_the_tagged_objects_and_the_budget_holds() {
        let mut index = TagIndex::new(400);
        assert!(index.insert(1, &tags(&["user-1", "users"])));
        assert!(index.insert(2, &tags(&["user-2", "users"])));
        assert!(index.insert(3, &tags(&["user-10"])));
        let mut found = index.objects(&tags(&["user-1"]));
        found.sort();
        assert_eq!(found, [1], "exact match: user-1 does not reach user-10");
        let mut found = index.objects(&tags(&["users", "user-10"]));
        found.sort();
        assert_eq!(found, [1, 2, 3]);
        let used = index.bytes();
        assert!(
            !index.insert(4, &tags(&["a-very-long-tag-that-will-not-fit-the-remaining-budget-at-all-x"])),
            "{used}"
        );
        assert_eq!(index.bytes(), used, "a refused insert indexes nothing");
        index.remove(1, &tags(&["user-1", "users"]));
        index.remove(2, &tags(&["user-2", "users"]));
        index.remove(3, &tags(&["user-10"]));
        assert_eq!(index.bytes(), 0);
        assert!(index.objects(&tags(&["users"])).is_empty());
    }

    #[test]
    fn both_field_syntaxes_are_read() {
        let got = response_tags(Some(b"  a b\tc "), Some(b"c, d,,e"));
        assert_eq!(got, tags(&["a", "b", "c", "d", "e"]));
        assert!(response_tags(None, None).is_empty());
    }
}
