//! The key-value API's request rules that need no I/O (docs/spec.md §2):
//! key decoding, `?ttl=`, `X-Durability`.
//!
//! Each rule answers a value or a [`RequestError`] naming the status and
//! the problem detail; the server turns the error into its response.

use std::borrow::Cow;

use crate::kv::KEY_BYTES_MAX;
use crate::queued::WRITE_KEY_PREFIX;
use crate::record::TooLong;

/// Longest accepted `?ttl=`: about 136 years, so expiry math cannot overflow.
pub const TTL_SECONDS_MAX: u64 = u32::MAX as u64;

/// A request the API refuses: the status and the problem detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub detail: &'static str,
}

const fn refuse(status: u16, detail: &'static str) -> RequestError {
    RequestError { status, detail }
}

/// Percent-decodes a key and checks its length (1 to 1024 bytes). Borrows
/// the input when there is nothing to decode.
pub fn decode_key(raw: &[u8]) -> Result<Cow<'_, [u8]>, RequestError> {
    let key = if raw.contains(&b'%') {
        let mut decoded = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] != b'%' {
                decoded.push(raw[i]);
                i += 1;
                continue;
            }
            let byte = raw.get(i + 1..i + 3).and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?));
            let Some(byte) = byte else {
                return Err(refuse(400, "invalid percent-encoding in key"));
            };
            decoded.push(byte);
            i += 3;
        }
        Cow::Owned(decoded)
    } else {
        Cow::Borrowed(raw)
    };
    if key.is_empty() {
        return Err(refuse(404, "no key in path: use /v1/kv/{key}"));
    }
    if key.starts_with(WRITE_KEY_PREFIX) {
        // The gateway's queued writes live under this prefix: a client key
        // there would be delivered as a write (or routed as one).
        return Err(refuse(400, "keys starting with %00w/ are reserved"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(refuse(414, "key longer than 1024 bytes"));
    }
    Ok(key)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// Reads `ttl=SECONDS` from a query string; other parameters are ignored.
pub fn parse_ttl(query: &[u8]) -> Result<Option<u64>, RequestError> {
    let Some(value) = query.split(|&b| b == b'&').find_map(|pair| pair.strip_prefix(b"ttl=")) else {
        return Ok(None);
    };
    let seconds = std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| (1..=TTL_SECONDS_MAX).contains(&s));
    match seconds {
        Some(s) => Ok(Some(s)),
        None => Err(refuse(400, "ttl must be a whole number of seconds from 1 to 4294967295")),
    }
}

/// The refusal of a write whose fields the log record cannot hold: an
/// overlong content type is a header field too large (431), an overlong
/// value a body too large (413), an overlong key a target too long (414).
pub fn too_long(field: TooLong) -> RequestError {
    match field {
        TooLong::Key => refuse(414, "key longer than 1024 bytes"),
        TooLong::ContentType => refuse(431, "Content-Type longer than 65535 bytes"),
        TooLong::Value => refuse(413, "value larger than 1 GiB"),
    }
}

/// Whether a write waits for fdatasync: `X-Durability: sync` asks for it
/// whatever the server default, `async` waives a `sync` default.
pub fn wants_sync(header: Option<&[u8]>, sync_by_default: bool) -> Result<bool, RequestError> {
    match header {
        None => Ok(sync_by_default),
        Some(value) if value.eq_ignore_ascii_case(b"sync") => Ok(true),
        Some(value) if value.eq_ignore_ascii_case(b"async") => Ok(false),
        Some(_) => Err(refuse(400, "X-Durability must be sync or async")),
    }
}

#[cfg(test)]
mod tests;
