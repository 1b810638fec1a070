//! The durable log's record: one put or delete, length-prefixed and
//! checksummed, and the scan that replays a segment.
//!
//! # Byte layout, version 1 (little-endian)
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | `record_bytes`: length of the whole record, this field included |
//! | 4 | 4 | CRC32C (Castagnoli) of bytes `8..record_bytes` |
//! | 8 | 4 | magic `SGLR` |
//! | 12 | 1 | version, 1 |
//! | 13 | 1 | op: 1 put, 2 delete |
//! | 14 | 2 | key bytes, 1..=1024 |
//! | 16 | 2 | content type bytes (0 for a delete) |
//! | 18 | 2 | reserved, 0 |
//! | 20 | 4 | value bytes (0 for a delete) |
//! | 24 | 8 | sequence: per shard, increasing |
//! | 32 | 8 | timestamp, ms since the Unix epoch, when written |
//! | 40 | 8 | absolute expiry, ms since the Unix epoch; 0 never expires |
//! | 48 | … | key, content type, value |
//!
//! The length comes first so a reader can step over a record, and the
//! checksum covers everything after itself, so a torn write (a record cut
//! short by a crash) and a flipped bit are both caught. The expiry is
//! absolute, so a TTL survives restarts. This layout is a contract: a
//! multi-node deployment may ship these records between nodes, so it changes
//! only with a new version number.
//!
//! Why a hand-checked header rather than rkyv: every field is fixed-size and
//! the payload is three byte strings, so decoding is a handful of bounded
//! little-endian reads; rkyv's zero-copy access would save nothing here while
//! adding an archive format whose validation rules we would have to pin
//! across versions ourselves. Hint files (`hint`) follow the same reasoning.

use crate::kv::KEY_BYTES_MAX;

pub const MAGIC: [u8; 4] = *b"SGLR";
pub const VERSION: u8 = 1;

const RECORD_BYTES_OFFSET: usize = 0;
const CRC_OFFSET: usize = 4;
const MAGIC_OFFSET: usize = 8;
const VERSION_OFFSET: usize = 12;
const OP_OFFSET: usize = 13;
const KEY_BYTES_OFFSET: usize = 14;
const CONTENT_TYPE_BYTES_OFFSET: usize = 16;
const RESERVED_OFFSET: usize = 18;
const VALUE_BYTES_OFFSET: usize = 20;
const SEQUENCE_OFFSET: usize = 24;
const TIMESTAMP_OFFSET: usize = 32;
const EXPIRES_OFFSET: usize = 40;
/// Bytes before the key.
pub const HEADER_BYTES: usize = 48;
/// The checksum covers the record from here on.
const CHECKED_FROM: usize = MAGIC_OFFSET;

/// Largest value a record may hold; larger lengths in a header are corruption.
pub const VALUE_BYTES_MAX: usize = 1 << 30;
/// Largest content type a record may hold.
pub const CONTENT_TYPE_BYTES_MAX: usize = u16::MAX as usize;
/// Largest whole record.
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + KEY_BYTES_MAX + CONTENT_TYPE_BYTES_MAX + VALUE_BYTES_MAX;

const _: () = assert!(EXPIRES_OFFSET + 8 == HEADER_BYTES);
const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOp {
    Put = 1,
    Delete = 2,
}

/// A record, borrowing its byte strings from the segment (or the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub op: RecordOp,
    pub sequence: u64,
    pub timestamp_ms: u64,
    /// `None`: never expires.
    pub expires_at_ms: Option<u64>,
    pub key: &'a [u8],
    pub content_type: &'a [u8],
    pub value: &'a [u8],
}

/// Why a record cannot be written: a field longer than the format holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooLong {
    /// Empty, or over [`KEY_BYTES_MAX`].
    Key,
    /// Over [`CONTENT_TYPE_BYTES_MAX`].
    ContentType,
    /// Over [`VALUE_BYTES_MAX`].
    Value,
}

/// Checks a record's field lengths against the format, so that a caller
/// can refuse a write before anything changes (`encode` asserts them).
pub fn check_lengths(key: &[u8], content_type: &[u8], value: &[u8]) -> Result<(), TooLong> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(TooLong::Key);
    }
    if content_type.len() > CONTENT_TYPE_BYTES_MAX {
        return Err(TooLong::ContentType);
    }
    if value.len() > VALUE_BYTES_MAX {
        return Err(TooLong::Value);
    }
    Ok(())
}

/// Why bytes are not a record. Recovery stops at the first such record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record needs: the torn tail of a crash.
    Truncated {
        needed: usize,
        available: usize,
    },
    /// The length field is impossible.
    BadLength(u32),
    BadChecksum,
    BadMagic,
    UnsupportedVersion(u8),
    BadOp(u8),
    /// The field lengths do not add up to the record length, a key is empty
    /// or too long, a delete carries a value, or reserved bits are set.
    BadFields,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "truncated: {needed} bytes needed, {available} present")
            }
            DecodeError::BadLength(length) => write!(f, "impossible record length {length}"),
            DecodeError::BadChecksum => f.write_str("checksum mismatch"),
            DecodeError::BadMagic => f.write_str("bad magic"),
            DecodeError::UnsupportedVersion(version) => write!(f, "unsupported record version {version}"),
            DecodeError::BadOp(op) => write!(f, "unknown op {op}"),
            DecodeError::BadFields => f.write_str("field lengths disagree with the record"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Record<'_> {
    /// Bytes the encoded record takes.
    pub fn encoded_bytes(&self) -> usize {
        HEADER_BYTES + self.key.len() + self.content_type.len() + self.value.len()
    }

    /// Appends the record to `target`. The record is ours, not a peer's, so
    /// a malformed one is a bug: asserted, then decoded back and compared.
    pub fn encode(&self, target: &mut Vec<u8>) {
        assert!(!self.key.is_empty() && self.key.len() <= KEY_BYTES_MAX, "key length {}", self.key.len());
        assert!(self.content_type.len() <= CONTENT_TYPE_BYTES_MAX && self.value.len() <= VALUE_BYTES_MAX);
        assert!(self.op == RecordOp::Put || (self.value.is_empty() && self.content_type.is_empty()));
        assert_ne!(self.expires_at_ms, Some(0), "expiry 0 means never; use None");
        let start = target.len();
        let length = self.encoded_bytes();
        target.reserve(length);
        target.extend_from_slice(&(length as u32).to_le_bytes());
        target.extend_from_slice(&[0; 4]); // checksum, filled below
        target.extend_from_slice(&MAGIC);
        target.push(VERSION);
        target.push(self.op as u8);
        target.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        target.extend_from_slice(&(self.content_type.len() as u16).to_le_bytes());
        target.extend_from_slice(&[0; 2]);
        target.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        target.extend_from_slice(&self.sequence.to_le_bytes());
        target.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        target.extend_from_slice(&self.expires_at_ms.unwrap_or(0).to_le_bytes());
        assert_eq!(target.len() - start, HEADER_BYTES);
        target.extend_from_slice(self.key);
        target.extend_from_slice(self.content_type);
        target.extend_from_slice(self.value);
        let crc = crc32c::crc32c(&target[start + CHECKED_FROM..]);
        target[start + CRC_OFFSET..start + CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        let (decoded, used) = decode(&target[start..]).expect("an encoded record decodes");
        assert_eq!((decoded, used), (*self, length), "encode and decode disagree");
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at the start of `bytes`; returns it and its length.
/// Never panics: any byte string yields a record or a `DecodeError`.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::Truncated { needed: 4, available: bytes.len() });
    }
    let length_field = u32_at(bytes, RECORD_BYTES_OFFSET);
    let length = length_field as usize;
    if !(HEADER_BYTES + 1..=RECORD_BYTES_MAX).contains(&length) {
        return Err(DecodeError::BadLength(length_field));
    }
    if bytes.len() < length {
        return Err(DecodeError::Truncated { needed: length, available: bytes.len() });
    }
    let record = &bytes[..length];
    if crc32c::crc32c(&record[CHECKED_FROM..]) != u32_at(record, CRC_OFFSET) {
        return Err(DecodeError::BadChecksum);
    }
    if record[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if record[VERSION_OFFSET] != VERSION {
        return Err(DecodeError::UnsupportedVersion(record[VERSION_OFFSET]));
    }
    let op = match record[OP_OFFSET] {
        1 => RecordOp::Put,
        2 => RecordOp::Delete,
        other => return Err(DecodeError::BadOp(other)),
    };
    let key_bytes = usize::from(u16_at(record, KEY_BYTES_OFFSET));
    let content_type_bytes = usize::from(u16_at(record, CONTENT_TYPE_BYTES_OFFSET));
    let value_bytes = u32_at(record, VALUE_BYTES_OFFSET) as usize;
    let fields_fit =
        HEADER_BYTES as u64 + key_bytes as u64 + content_type_bytes as u64 + value_bytes as u64 == length as u64;
    let key_ok = (1..=KEY_BYTES_MAX).contains(&key_bytes);
    let delete_ok = op == RecordOp::Put || content_type_bytes + value_bytes == 0;
    if !fields_fit || !key_ok || !delete_ok || u16_at(record, RESERVED_OFFSET) != 0 {
        return Err(DecodeError::BadFields);
    }
    let key_end = HEADER_BYTES + key_bytes;
    let content_type_end = key_end + content_type_bytes;
    let expires = u64_at(record, EXPIRES_OFFSET);
    let decoded = Record {
        op,
        sequence: u64_at(record, SEQUENCE_OFFSET),
        timestamp_ms: u64_at(record, TIMESTAMP_OFFSET),
        expires_at_ms: (expires != 0).then_some(expires),
        key: &record[HEADER_BYTES..key_end],
        content_type: &record[key_end..content_type_end],
        value: &record[content_type_end..],
    };
    Ok((decoded, length))
}

/// How far a segment decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start that hold whole, valid records: where to
    /// truncate a torn or corrupt tail.
    pub valid_bytes: usize,
    pub records: u64,
    /// Why the scan stopped before the end, or (for a sealed segment) the
    /// first bad record it stepped over; `None` when every byte decoded.
    pub stop: Option<DecodeError>,
    /// In a sealed segment: the unreadable ranges stepped over (each up to
    /// the next record whose header and checksum hold), and their bytes.
    pub skipped_ranges: usize,
    pub skipped_bytes: usize,
}

impl Scan {
    /// Bytes after the valid prefix that recovery discards.
    pub fn discarded_bytes(&self, segment_bytes: usize) -> usize {
        segment_bytes - self.valid_bytes
    }
}

/// Decodes records from the start of `segment` until its end or the first
/// record that does not decode, handing each to `visit` with its offset.
pub fn scan<'a>(segment: &'a [u8], visit: impl FnMut(usize, Record<'a>)) -> Scan {
    scan_with(segment, visit, false)
}

/// Like [`scan`], for a sealed segment: a bad record loses that record
/// only. The scan resynchronises on the next offset where a record's magic
/// sits and the record decodes (its checksum holds), and records the bytes
/// it skipped. `valid_bytes` is then the whole segment: nothing is cut off
/// a sealed segment, whose later records are still good.
pub fn scan_sealed<'a>(segment: &'a [u8], visit: impl FnMut(usize, Record<'a>)) -> Scan {
    scan_with(segment, visit, true)
}

fn scan_with<'a>(segment: &'a [u8], mut visit: impl FnMut(usize, Record<'a>), sealed: bool) -> Scan {
    let mut offset = 0;
    let mut records = 0;
    let mut stop = None;
    let (mut skipped_ranges, mut skipped_bytes) = (0, 0);
    while offset < segment.len() {
        match decode(&segment[offset..]) {
            Ok((record, length)) => {
                visit(offset, record);
                offset += length;
                records += 1;
            }
            Err(error) if !sealed => {
                return Scan { valid_bytes: offset, records, stop: Some(error), skipped_ranges, skipped_bytes };
            }
            Err(error) => {
                stop = stop.or(Some(error));
                // A candidate that does not decode either is stepped over in turn.
                let next = next_record(segment, offset + 1).unwrap_or(segment.len());
                skipped_ranges += 1;
                skipped_bytes += next - offset;
                offset = next;
            }
        }
    }
    Scan { valid_bytes: offset, records, stop, skipped_ranges, skipped_bytes }
}

/// The first offset at or after `from` where a record may start: its magic
/// is in place and it decodes, or it runs past the end of `bytes` (a
/// compaction chunk ends inside it; the caller reads on). Resynchronising
/// on a bad record starts here.
pub fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut search = from + MAGIC_OFFSET;
    while search + MAGIC.len() <= bytes.len() {
        let found = bytes[search..].windows(MAGIC.len()).position(|w| w == MAGIC)?;
        let start = search + found - MAGIC_OFFSET;
        if matches!(decode(&bytes[start..]), Ok(_) | Err(DecodeError::Truncated { .. })) {
            return Some(start);
        }
        search += found + 1;
    }
    None
}

/// Bytes at the end of a chunk in which a record's magic may begin without
/// being whole: a chunk reader that found no record keeps them for the next.
pub const MAGIC_END_OFFSET: usize = MAGIC_OFFSET + MAGIC.len();

/// Where the newest version of a live key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located<'a> {
    pub segment: usize,
    pub offset: usize,
    pub record: Record<'a>,
}

/// One shard's state rebuilt from its segments.
#[derive(Debug)]
pub struct Recovered<'a> {
    /// Every key whose newest record is a put that has not expired.
    pub live: hashbrown::HashMap<&'a [u8], Located<'a>>,
    /// Per segment, how far it decoded.
    pub scans: Vec<Scan>,
    /// The highest sequence seen; the shard continues after it.
    pub sequence_max: u64,
}

/// Replays a shard's segments, oldest first: a later record of a key
/// replaces an earlier one, a delete removes it, and keys expired at
/// `now_ms` are dropped. The last segment is decoded up to its first bad
/// record (a torn tail); the sealed ones step over bad records
/// ([`scan_sealed`]).
pub fn recover<'a>(segments: &[&'a [u8]], now_ms: u64) -> Recovered<'a> {
    let mut live: hashbrown::HashMap<&'a [u8], Located<'a>> = hashbrown::HashMap::new();
    let mut sequence_max = 0;
    let scans = segments
        .iter()
        .enumerate()
        .map(|(index, segment)| {
            let visit = |offset, record: Record<'a>| {
                sequence_max = sequence_max.max(record.sequence);
                match record.op {
                    RecordOp::Put => {
                        live.insert(record.key, Located { segment: index, offset, record });
                    }
                    RecordOp::Delete => {
                        live.remove(record.key);
                    }
                }
            };
            match index + 1 == segments.len() {
                true => scan(segment, visit),
                false => scan_sealed(segment, visit),
            }
        })
        .collect();
    live.retain(|_, located| located.record.expires_at_ms.is_none_or(|at| at > now_ms));
    Recovered { live, scans, sequence_max }
}

#[cfg(test)]
mod tests;
