//! `Vary: Accept-Encoding` without splitting the cache on trivial header
//! differences (Varnish normalises the field the same way): a stored
//! variant is keyed by the content coding it *has* (`gzip`, `br`,
//! `identity`), not by the `Accept-Encoding` text of the request that
//! fetched it, and a request takes the stored variant whose coding it
//! accepts with the highest weight (RFC 9110 §12.5.3).

use bytes::Bytes;

use super::{split_list, trim};

/// The key a variant with this `Content-Encoding` is stored under.
pub fn coding_key(content_encoding: Option<&[u8]>) -> Bytes {
    match content_encoding.map(trim).filter(|c| !c.is_empty()) {
        None => Bytes::from_static(b"identity"),
        Some(coding) => Bytes::from(coding.to_ascii_lowercase()),
    }
}

/// How much a request's `Accept-Encoding` wants `coding`, in thousandths
/// (0: not acceptable). Without the field only `identity` is taken: a
/// client that said nothing gets no compressed body.
pub fn weight(accept_encoding: Option<&[u8]>, coding: &[u8]) -> u16 {
    let identity = coding == b"identity";
    let Some(accept) = accept_encoding else {
        return if identity { 1000 } else { 0 };
    };
    let mut star = None;
    let mut named = None;
    for member in split_list(accept) {
        let mut parts = member.split(|&b| b == b';');
        let name = trim(parts.next().unwrap_or_default());
        let q = parts
            .filter_map(|p| {
                let p = trim(p);
                p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))
            })
            .next()
            .map_or(1000, parse_qvalue);
        if name.eq_ignore_ascii_case(coding) {
            named = Some(q);
        } else if name == b"*" {
            star = Some(q);
        }
    }
    // identity is acceptable unless excluded, by name or by `*;q=0`.
    named.or(star).unwrap_or(if identity { 1 } else { 0 })
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths; malformed counts as 0.
fn parse_qvalue(text: &[u8]) -> u16 {
    let text = std::str::from_utf8(trim(text)).unwrap_or("");
    match text.parse::<f64>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (the request's Accept-Encoding, a coding, its weight)
    type Case = (Option<&'static [u8]>, &'static [u8], u16);

    #[test]
    fn weights_follow_rfc_9110_12_5_3() {
        let cases: [Case; 11] = [
            (None, b"identity", 1000),
            (None, b"gzip", 0),
            (Some(b"gzip, br"), b"gzip", 1000),
            (Some(b"gzip, br"), b"identity", 1),
            (Some(b"gzip;q=0.5, br"), b"gzip", 500),
            (Some(b"GZIP ; q=0.25"), b"gzip", 250),
            (Some(b"br;q=0"), b"br", 0),
            (Some(b"*;q=0.1"), b"zstd", 100),
            (Some(b"*;q=0"), b"identity", 0),
            (Some(b"identity;q=0, gzip"), b"identity", 0),
            (Some(b"gzip;q=bad"), b"gzip", 0),
        ];
        for (accept, coding, expect) in cases {
            assert_eq!(weight(accept, coding), expect, "{:?} {:?}", accept.map(String::from_utf8_lossy), coding);
        }
        assert_eq!(coding_key(None), "identity");
        assert_eq!(coding_key(Some(b" GZip ")), "gzip");
    }
}
