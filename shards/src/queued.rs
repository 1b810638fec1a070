//! The gateway's queued asynchronous writes as stored records
//! (docs/spec.md §7).
//!
//! A queued write is a key-value record under a reserved key no client can
//! name, `\0w/{cache key hash:016x}-{sequence:016x}` ([`write_key`]). Its
//! value is first the request ([`QueuedWrite::encode`], content type
//! [`QUEUED_CONTENT_TYPE`]) and then its final [`WriteStatus`]: one record
//! replaces the other, so a write is never both queued and finished. The
//! key embeds the cache key's hash so that `route::shard_for_stored_key`
//! keeps a key's writes on that key's owner shard, also after re-homing.
//!
//! The public id of a write is `{cache key hash:016x}-{sequence:x}-{token}`
//! ([`format_id`]): its hash names the owner of `GET /_writes/{id}`, and its
//! token, 96 random bits kept in the write's [`Receipt`], makes it a secret
//! that cannot be guessed from another id.

use std::net::IpAddr;

use bytes::Bytes;

/// Keys of queued writes start with this; clients cannot name it.
pub const WRITE_KEY_PREFIX: &[u8] = b"\0w/";
/// Content type of a queued write's record: a [`Receipt`], then the
/// request ([`QueuedWrite::encode`]).
pub const QUEUED_CONTENT_TYPE: &[u8] = b"application/x-shardgate-write; version=2";
/// Content type of a finished write's record: a [`Receipt`], then the
/// [`WriteStatus`].
pub const STATUS_CONTENT_TYPE: &[u8] = b"application/x-shardgate-write-status";
/// The first version's content types (records without a receipt, written
/// before ids carried a secret): still delivered, their status readable
/// with the admin token only.
pub const LEGACY_QUEUED_CONTENT_TYPE: &[u8] = b"application/x-shardgate-write";
pub const LEGACY_STATUS_CONTENT_TYPE: &[u8] = b"text/plain";
/// Random bytes in a write id: 96 bits, so ids cannot be guessed.
pub const TOKEN_BYTES: usize = 12;

/// Whether a record of this content type is a write still queued.
pub fn is_queued(content_type: &[u8]) -> bool {
    content_type == QUEUED_CONTENT_TYPE || content_type == LEGACY_QUEUED_CONTENT_TYPE
}

/// Whether a record of this content type is a finished write's status.
pub fn is_status(content_type: &[u8]) -> bool {
    content_type == STATUS_CONTENT_TYPE || content_type == LEGACY_STATUS_CONTENT_TYPE
}

/// Who may read a write's status: whoever presents its id's random token
/// and is the client that made it (its rate-limit identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub token: [u8; TOKEN_BYTES],
    /// The writer's identity (`quota::identity_*`); None when unknown.
    pub owner: Option<u64>,
}

/// Bytes of an encoded receipt: token, a presence byte, the owner.
const RECEIPT_BYTES: usize = TOKEN_BYTES + 1 + 8;

impl Receipt {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.token);
        out.push(u8::from(self.owner.is_some()));
        out.extend_from_slice(&self.owner.unwrap_or(0).to_le_bytes());
    }

    /// The receipt at the start of `bytes` and what follows it.
    pub fn decode(bytes: &[u8]) -> Option<(Receipt, &[u8])> {
        let head = bytes.get(..RECEIPT_BYTES)?;
        let token = head[..TOKEN_BYTES].try_into().ok()?;
        let owner = match head[TOKEN_BYTES] {
            0 => None,
            1 => Some(u64::from_le_bytes(head[TOKEN_BYTES + 1..].try_into().ok()?)),
            _ => return None,
        };
        Some((Receipt { token, owner }, &bytes[RECEIPT_BYTES..]))
    }

    /// Whether `presented` is this receipt's token (compared in constant time).
    pub fn token_matches(&self, presented: &[u8; TOKEN_BYTES]) -> bool {
        self.token.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// A write record's receipt and payload: None for the receipt of a legacy
/// record, and None altogether when a current record has no valid receipt.
pub fn open_record<'a>(content_type: &[u8], value: &'a [u8]) -> Option<(Option<Receipt>, &'a [u8])> {
    if content_type == QUEUED_CONTENT_TYPE || content_type == STATUS_CONTENT_TYPE {
        let (receipt, payload) = Receipt::decode(value)?;
        return Some((Some(receipt), payload));
    }
    Some((None, value))
}

/// A request queued for delivery to the origin, in owned form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedWrite {
    pub key_hash: u64,
    pub method: Bytes,
    pub target: Bytes,
    /// The request's header fields as sent (name, value).
    pub fields: Vec<(Bytes, Bytes)>,
    pub peer: Option<IpAddr>,
    pub body: Bytes,
}

impl QueuedWrite {
    /// Layout (little-endian): key hash u64, method token (u16 length +
    /// bytes), target (u32 + bytes), field count u16 then per field name
    /// (u16 + bytes) and value (u32 + bytes), peer (u16 + text, empty when
    /// unknown), body (u32 + bytes).
    ///
    /// None when a part is longer than its length field holds (a method or
    /// a field name over 65,535 bytes, more than 65,535 fields): nothing is
    /// ever truncated into a record that would not decode.
    pub fn encode(&self) -> Option<Bytes> {
        let short = |bytes: &[u8]| bytes.len() <= u16::MAX as usize;
        let fits = short(&self.method)
            && self.fields.len() <= u16::MAX as usize
            && self.fields.iter().all(|(name, value)| short(name) && value.len() <= u32::MAX as usize)
            && self.target.len() <= u32::MAX as usize
            && self.body.len() <= u32::MAX as usize;
        if !fits {
            return None;
        }
        let mut out = Vec::with_capacity(64 + self.target.len() + self.body.len() + self.fields.len() * 48);
        out.extend_from_slice(&self.key_hash.to_le_bytes());
        put(&mut out, &self.method, 2);
        put(&mut out, &self.target, 4);
        out.extend_from_slice(&(self.fields.len() as u16).to_le_bytes());
        for (name, value) in &self.fields {
            put(&mut out, name, 2);
            put(&mut out, value, 4);
        }
        put(&mut out, self.peer.map(|p| p.to_string()).unwrap_or_default().as_bytes(), 2);
        put(&mut out, &self.body, 4);
        Some(Bytes::from(out))
    }

    /// The inverse of [`QueuedWrite::encode`]; None for bytes it did not produce.
    pub fn decode(bytes: &[u8]) -> Option<QueuedWrite> {
        let mut cursor = Cursor { rest: bytes };
        let key_hash = u64::from_le_bytes(cursor.take(8)?.try_into().ok()?);
        let method = cursor.sized(2)?;
        let target = cursor.sized(4)?;
        let count = u16::from_le_bytes(cursor.take(2)?.try_into().ok()?);
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            fields.push((cursor.sized(2)?, cursor.sized(4)?));
        }
        let peer = cursor.sized(2)?;
        let body = cursor.sized(4)?;
        if !cursor.rest.is_empty() {
            return None;
        }
        let peer = std::str::from_utf8(&peer).ok().and_then(|p| p.parse().ok());
        Some(QueuedWrite { key_hash, method, target, fields, peer, body })
    }
}

/// A length of `width` bytes (checked by the caller to hold it), then the bytes.
fn put(out: &mut Vec<u8>, bytes: &[u8], width: usize) {
    debug_assert!(width == 4 || bytes.len() <= u16::MAX as usize);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes()[..width]);
    out.extend_from_slice(bytes);
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.rest.get(..n)?, self.rest.get(n..)?);
        self.rest = tail;
        Some(head)
    }

    /// A length of `width` bytes, then that many bytes.
    fn sized(&mut self, width: usize) -> Option<Bytes> {
        let mut length = [0u8; 4];
        length[..width].copy_from_slice(self.take(width)?);
        self.take(u32::from_le_bytes(length) as usize).map(Bytes::copy_from_slice)
    }
}

/// How a write ended, as its status record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteStatus {
    /// The origin answered with this status (below 500).
    Delivered(u16),
    /// Given up; the reason.
    Failed(String),
    /// Handed to the cluster's write stream (docs/spec.md §8), which
    /// delivers it and keeps its final status; this node keeps only this.
    Published,
}

impl WriteStatus {
    /// `delivered {status}`, `failed {reason}` or `published`.
    pub fn encode(&self) -> Bytes {
        match self {
            WriteStatus::Delivered(status) => Bytes::from(format!("delivered {status}")),
            WriteStatus::Failed(reason) => Bytes::from(format!("failed {reason}")),
            WriteStatus::Published => Bytes::from_static(b"published"),
        }
    }

    /// The inverse of [`WriteStatus::encode`]; None for anything else.
    pub fn decode(bytes: &[u8]) -> Option<WriteStatus> {
        let text = std::str::from_utf8(bytes).ok()?;
        if text == "published" {
            return Some(WriteStatus::Published);
        }
        match text.split_once(' ')? {
            ("delivered", status) => status.parse().ok().map(WriteStatus::Delivered),
            ("failed", reason) => Some(WriteStatus::Failed(reason.to_string())),
            _ => None,
        }
    }
}

/// `{key_hash:016x}-{sequence:x}-{token:024x}`.
pub fn format_id(key_hash: u64, sequence: u64, token: &[u8; TOKEN_BYTES]) -> String {
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    format!("{key_hash:016x}-{sequence:x}-{token}")
}

/// A parsed write id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteId {
    pub key_hash: u64,
    pub sequence: u64,
    /// None in a legacy id (`{key_hash}-{sequence}`).
    pub token: Option<[u8; TOKEN_BYTES]>,
}

/// The parts of an id; None when malformed.
pub fn parse_id(text: &[u8]) -> Option<WriteId> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.split('-');
    let (hash, sequence, token) = (parts.next()?, parts.next()?, parts.next());
    let hex = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.next().is_some() || hash.len() != 16 || !hex(hash) || !hex(sequence) {
        return None;
    }
    let token = match token {
        None => None,
        Some(token) if token.len() == 2 * TOKEN_BYTES && token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let mut bytes = [0u8; TOKEN_BYTES];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).ok()?;
            }
            Some(bytes)
        }
        Some(_) => return None,
    };
    Some(WriteId {
        key_hash: u64::from_str_radix(hash, 16).ok()?,
        sequence: u64::from_str_radix(sequence, 16).ok()?,
        token,
    })
}

/// The reserved key of a queued write.
pub fn write_key(key_hash: u64, sequence: u64) -> Bytes {
    Bytes::from([WRITE_KEY_PREFIX, format!("{key_hash:016x}-{sequence:016x}").as_bytes()].concat())
}

/// The cache key hash and sequence in a write key.
pub fn parse_write_key(key: &[u8]) -> Option<(u64, u64)> {
    let rest = std::str::from_utf8(key.strip_prefix(WRITE_KEY_PREFIX)?).ok()?;
    let (hash, sequence) = rest.split_once('-')?;
    Some((u64::from_str_radix(hash, 16).ok()?, u64::from_str_radix(sequence, 16).ok()?))
}

/// The cache key hash a stored key embeds, if it is a write key.
pub fn embedded_hash(key: &[u8]) -> Option<u64> {
    let hex = key.strip_prefix(WRITE_KEY_PREFIX)?.get(..16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests;
