//! Entity tags and conditional requests (RFC 9110 §8.8.3, §13).
//!
//! shardgate's ETags are strong validators: XXH3-64 of the stored
//! representation (content type, a zero byte, then the value), written as 16
//! lowercase hex digits in quotes. Equal representations therefore get equal
//! tags, on any shard and after any restart.

use std::fmt;

/// A strong entity tag of a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Etag(pub u64);

/// Bytes of an encoded tag: a quote, 16 hex digits, a quote.
pub const ETAG_ENCODED_BYTES: usize = 18;

impl Etag {
    /// Returns the tag of a representation.
    pub fn of(content_type: &[u8], value: &[u8]) -> Etag {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(content_type);
        hasher.update(&[0]);
        hasher.update(value);
        Etag(hasher.digest())
    }

    /// Returns the tag as it appears in an `ETag` header, quotes included.
    pub fn encode(self) -> [u8; ETAG_ENCODED_BYTES] {
        let mut target = [b'"'; ETAG_ENCODED_BYTES];
        for (i, byte) in self.0.to_be_bytes().into_iter().enumerate() {
            target[1 + 2 * i..3 + 2 * i].copy_from_slice(&HEX_PAIRS[byte as usize]);
        }
        target
    }
}

/// The two lowercase hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{:016x}\"", self.0)
    }
}

/// One member of an `If-Match` / `If-None-Match` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedTag {
    weak: bool,
    /// `None` when the opaque tag is not one shardgate could have issued; such
    /// a tag never matches.
    tag: Option<Etag>,
}

/// A parsed `If-Match` or `If-None-Match` field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagList {
    /// `*`: matches any current representation.
    Any,
    Tags(Vec<ListedTag>),
}

/// Most tags kept from one list; more are ignored, bounding the work a
/// request can ask for.
pub const TAG_LIST_ENTRIES_MAX: usize = 32;

impl TagList {
    /// Parses a field value. Members that are not valid entity tags are kept
    /// as never-matching entries rather than rejected, as most servers do.
    pub fn parse(value: &[u8]) -> TagList {
        let trimmed = trim(value);
        if trimmed == b"*" {
            return TagList::Any;
        }
        let tags = trimmed
            .split(|&b| b == b',')
            .map(trim)
            .filter(|member| !member.is_empty())
            .take(TAG_LIST_ENTRIES_MAX)
            .map(parse_member)
            .collect();
        TagList::Tags(tags)
    }

    /// Strong comparison, as `If-Match` requires: weak tags never match.
    fn matches_strong(&self, current: Etag) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| !t.weak && t.tag == Some(current)),
        }
    }

    /// Weak comparison, as `If-None-Match` requires.
    fn matches_weak(&self, current: Etag) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| t.tag == Some(current)),
        }
    }
}

fn parse_member(member: &[u8]) -> ListedTag {
    let (weak, rest) = match member.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, member),
    };
    let tag = rest
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .filter(|hex| hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(Etag);
    ListedTag { weak, tag }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The preconditions of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<TagList>,
    pub if_none_match: Option<TagList>,
}

/// What evaluating the preconditions decided (RFC 9110 §13.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// `If-None-Match` failed on GET or HEAD: answer 304.
    NotModified,
    /// Answer 412.
    Failed,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Evaluates against the current representation's tag (`None`: absent).
    /// `safe` is true for GET and HEAD.
    pub fn evaluate(&self, current: Option<Etag>, safe: bool) -> Verdict {
        if let Some(list) = &self.if_match {
            let holds = current.is_some_and(|tag| list.matches_strong(tag));
            if !holds {
                return Verdict::Failed;
            }
        }
        if let Some(list) = &self.if_none_match {
            let matched = current.is_some_and(|tag| list.matches_weak(tag));
            if matched {
                return if safe { Verdict::NotModified } else { Verdict::Failed };
            }
        }
        Verdict::Proceed
    }
}

#[cfg(test)]
mod tests;
