//! Hint files: a sealed segment's records without their values, so that a
//! restart rebuilds the keydir without reading every value (Bitcask's
//! hint files).
//!
//! A hint file `NNN.hint` sits next to segment `NNN.log` and lists every
//! record of that segment, in order, with what the keydir needs: op, key,
//! content type, the record's place in the segment, expiry, sequence and
//! the value's entity tag. Recovery replays hinted segments from their
//! hints (values stay on disk, read on first use, their checksums verified
//! then) and reads only unhinted segments, the active one included, whole.
//! A hint file that is missing, torn or fails its checksum is ignored and
//! its segment read instead: hints are an optimisation, never the truth.
//!
//! # Byte layout, version 1 (little-endian)
//!
//! Entries, then a 16-byte trailer.
//!
//! | offset | bytes | entry field |
//! |---|---|---|
//! | 0 | 2 | key bytes, 1..=1024 |
//! | 2 | 2 | content type bytes |
//! | 4 | 1 | op: 1 put, 2 delete |
//! | 5 | 3 | reserved, 0 |
//! | 8 | 8 | record offset within the segment |
//! | 16 | 4 | record bytes |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 8 | absolute expiry, ms; 0 never |
//! | 32 | 8 | sequence |
//! | 40 | 8 | entity tag of the value (XXH3-64 of content type and value) |
//! | 48 | … | key, content type |
//!
//! | trailer offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `SGHT` |
//! | 4 | 1 | version, 1 |
//! | 5 | 3 | reserved, 0 |
//! | 8 | 4 | entry count |
//! | 12 | 4 | CRC32C of every byte before the trailer and trailer bytes 0..12 |
//!
//! Why a hand-checked layout and not rkyv: the file is read once, front to
//! back, at start; nothing is looked up in place, so zero-copy access would
//! save nothing, and a fixed table of offsets is a contract other tools can
//! read without pinning an archive format's version.

use crate::compaction::Location;
use crate::conditions::Etag;
use crate::kv::KEY_BYTES_MAX;
use crate::record::{self, Record, RecordOp};

pub const MAGIC: [u8; 4] = *b"SGHT";
pub const VERSION: u8 = 1;
/// Bytes of an entry before its key.
pub const ENTRY_HEADER_BYTES: usize = 48;
pub const TRAILER_BYTES: usize = 16;

/// One record of a segment, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint<'a> {
    pub op: RecordOp,
    pub key: &'a [u8],
    pub content_type: &'a [u8],
    /// Offset of the record within its segment.
    pub offset: u64,
    pub bytes: u32,
    pub expires_at_ms: Option<u64>,
    pub sequence: u64,
    pub etag: Etag,
}

/// Why bytes are not a hint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    #[error("shorter than its trailer")]
    Truncated,
    #[error("bad magic or version")]
    BadTrailer,
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed entry at {0}")]
    Malformed(usize),
}

/// Appends the hint of `record`, found at `offset` in its segment.
pub fn encode_entry(record: &Record<'_>, offset: u64, target: &mut Vec<u8>) {
    assert!(!record.key.is_empty() && record.key.len() <= KEY_BYTES_MAX);
    target.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
    target.extend_from_slice(&(record.content_type.len() as u16).to_le_bytes());
    target.push(record.op as u8);
    target.extend_from_slice(&[0; 3]);
    target.extend_from_slice(&offset.to_le_bytes());
    target.extend_from_slice(&(record.encoded_bytes() as u32).to_le_bytes());
    target.extend_from_slice(&[0; 4]);
    target.extend_from_slice(&record.expires_at_ms.unwrap_or(0).to_le_bytes());
    target.extend_from_slice(&record.sequence.to_le_bytes());
    target.extend_from_slice(&Etag::of(record.content_type, record.value).0.to_le_bytes());
    target.extend_from_slice(record.key);
    target.extend_from_slice(record.content_type);
}

/// Hints for every whole record of a segment's `bytes`.
pub fn of_segment(bytes: &[u8], target: &mut Vec<u8>) -> u32 {
    let mut count = 0;
    record::scan(bytes, |offset, record| {
        encode_entry(&record, offset as u64, target);
        count += 1;
    });
    count
}

/// Closes a hint file of `count` entries.
pub fn finish(count: u32, target: &mut Vec<u8>) {
    target.extend_from_slice(&MAGIC);
    target.push(VERSION);
    target.extend_from_slice(&[0; 3]);
    target.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(target);
    target.extend_from_slice(&crc.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Decodes a whole hint file, checking the trailer and every entry.
pub fn decode(bytes: &[u8]) -> Result<Vec<Hint<'_>>, HintError> {
    let body_bytes = bytes.len().checked_sub(TRAILER_BYTES).ok_or(HintError::Truncated)?;
    let trailer = &bytes[body_bytes..];
    if trailer[..4] != MAGIC || trailer[4] != VERSION {
        return Err(HintError::BadTrailer);
    }
    if crc32c::crc32c(&bytes[..body_bytes + 12]) != u32_at(trailer, 12) {
        return Err(HintError::Checksum);
    }
    let count = u32_at(trailer, 8) as usize;
    let body = &bytes[..body_bytes];
    let mut hints = Vec::with_capacity(count.min(body_bytes / ENTRY_HEADER_BYTES));
    let mut at = 0;
    while at < body.len() {
        let malformed = HintError::Malformed(at);
        let header = body.get(at..at + ENTRY_HEADER_BYTES).ok_or(malformed)?;
        let key_bytes = u16_at(header, 0) as usize;
        let content_type_bytes = u16_at(header, 2) as usize;
        let op = match header[4] {
            1 => RecordOp::Put,
            2 => RecordOp::Delete,
            _ => return Err(malformed),
        };
        let end = at + ENTRY_HEADER_BYTES + key_bytes + content_type_bytes;
        if !(1..=KEY_BYTES_MAX).contains(&key_bytes) || end > body.len() {
            return Err(malformed);
        }
        let record_bytes = u32_at(header, 16);
        if (record_bytes as usize) < record::HEADER_BYTES + key_bytes + content_type_bytes {
            return Err(malformed);
        }
        let expires = u64_at(header, 24);
        let key_start = at + ENTRY_HEADER_BYTES;
        hints.push(Hint {
            op,
            key: &body[key_start..key_start + key_bytes],
            content_type: &body[key_start + key_bytes..end],
            offset: u64_at(header, 8),
            bytes: record_bytes,
            expires_at_ms: (expires != 0).then_some(expires),
            sequence: u64_at(header, 32),
            etag: Etag(u64_at(header, 40)),
        });
        at = end;
    }
    if hints.len() != count {
        return Err(HintError::Malformed(body.len()));
    }
    Ok(hints)
}

/// Where a live key's newest record is, and what the keydir needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live<'a> {
    pub location: Location,
    pub content_type: &'a [u8],
    pub expires_at_ms: Option<u64>,
    pub etag: Etag,
    /// The value, when its segment was read whole; None when only hinted.
    pub value: Option<&'a [u8]>,
}

/// One segment as recovery sees it.
pub enum Source<'a> {
    /// Its hint file's entries.
    Hinted { first: u64, hints: Vec<Hint<'a>> },
    /// Its bytes, read whole.
    Read { first: u64, bytes: &'a [u8] },
}

/// What [`recover`] rebuilt from a shard's segments.
pub struct Recovery<'a> {
    /// Every key whose newest record is a put that has not expired.
    pub live: hashbrown::HashMap<&'a [u8], Live<'a>>,
    /// Per read segment, how far it decoded (hinted ones are whole).
    pub scans: Vec<Option<record::Scan>>,
    pub sequence_max: u64,
    pub records: u64,
}

/// Replays segments oldest first, from hints where there are some: later
/// records win, deletes remove, keys expired at `now_ms` are dropped.
pub fn recover<'a>(sources: &[Source<'a>], now_ms: u64) -> Recovery<'a> {
    let mut live: hashbrown::HashMap<&'a [u8], Live<'a>> = hashbrown::HashMap::new();
    let mut sequence_max = 0;
    let mut records = 0;
    let mut scans = Vec::with_capacity(sources.len());
    for (index, source) in sources.iter().enumerate() {
        let sealed = index + 1 < sources.len();
        match source {
            Source::Hinted { first, hints } => {
                for hint in hints {
                    records += 1;
                    sequence_max = sequence_max.max(hint.sequence);
                    match hint.op {
                        RecordOp::Put => {
                            let location = Location { offset: first + hint.offset, bytes: hint.bytes };
                            let item = Live {
                                location,
                                content_type: hint.content_type,
                                expires_at_ms: hint.expires_at_ms,
                                etag: hint.etag,
                                value: None,
                            };
                            live.insert(hint.key, item);
                        }
                        RecordOp::Delete => {
                            live.remove(hint.key);
                        }
                    }
                }
                scans.push(None);
            }
            Source::Read { first, bytes } => {
                let visit = |offset, record: Record<'a>| {
                    records += 1;
                    sequence_max = sequence_max.max(record.sequence);
                    match record.op {
                        RecordOp::Put => {
                            let location =
                                Location { offset: first + offset as u64, bytes: record.encoded_bytes() as u32 };
                            let item = Live {
                                location,
                                content_type: record.content_type,
                                expires_at_ms: record.expires_at_ms,
                                etag: Etag::of(record.content_type, record.value),
                                value: Some(record.value),
                            };
                            live.insert(record.key, item);
                        }
                        RecordOp::Delete => {
                            live.remove(record.key);
                        }
                    }
                };
                // A sealed segment loses a bad record only; the last one
                // stops at its torn tail.
                let scan = if sealed { record::scan_sealed(bytes, visit) } else { record::scan(bytes, visit) };
                scans.push(Some(scan));
            }
        }
    }
    live.retain(|_, item| item.expires_at_ms.is_none_or(|at| at > now_ms));
    Recovery { live, scans, sequence_max, records }
}

#[cfg(test)]
mod tests;
