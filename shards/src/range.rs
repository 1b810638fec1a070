//! Range requests against a complete representation (RFC 9110 §14), and
//! `If-Range` (§13.1.5). Only single byte ranges are answered with 206;
//! several ranges get the whole representation (allowed, §14.2), and a
//! `Range` that cannot be parsed is ignored, as §14.2 lets a server do.

use crate::httpcache::{parse_http_date_ms, trim};

/// What a request's `Range` asks of a representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation, 200.
    Full,
    /// Bytes `first..=last`, 206.
    Partial { first: u64, last: u64 },
    /// 416, with `Content-Range: bytes */length`.
    Unsatisfiable,
}

/// Evaluates `range` (the request's `Range` value) against a
/// representation of `length` bytes.
pub fn evaluate(range: Option<&[u8]>, length: u64) -> RangeAnswer {
    let Some(value) = range else {
        return RangeAnswer::Full;
    };
    let value = trim(value);
    let Some(set) = value.get(..6).filter(|unit| unit.eq_ignore_ascii_case(b"bytes=")).map(|_| &value[6..]) else {
        return RangeAnswer::Full; // Another unit: ignored.
    };
    if set.contains(&b',') {
        return RangeAnswer::Full; // Several ranges: the whole representation.
    }
    let Some(dash) = set.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (trim(&set[..dash]), trim(&set[dash + 1..]));
    match (number(first), number(last)) {
        // `-n`: the last n bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || length == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial { first: length - suffix.min(length), last: length - 1 }
        }
        (Some(first), None) if last.is_empty() => match first < length {
            true => RangeAnswer::Partial { first, last: length - 1 },
            false => RangeAnswer::Unsatisfiable,
        },
        (Some(first), Some(last)) if first <= last => match first < length {
            true => RangeAnswer::Partial { first, last: last.min(length - 1) },
            false => RangeAnswer::Unsatisfiable,
        },
        _ => RangeAnswer::Full,
    }
}

/// Whether `If-Range` lets the range apply (§13.1.5): an entity tag must
/// match the stored one by strong comparison; a date must equal the stored
/// `Last-Modified`. Absent: it applies.
pub fn if_range_holds(if_range: Option<&[u8]>, etag: Option<&[u8]>, last_modified: Option<&[u8]>) -> bool {
    let Some(condition) = if_range.map(trim) else {
        return true;
    };
    if condition.starts_with(b"\"") || condition.starts_with(b"W/") {
        let strong = |tag: &[u8]| !tag.starts_with(b"W/");
        return etag.map(trim).is_some_and(|stored| strong(stored) && strong(condition) && stored == condition);
    }
    match (parse_http_date_ms(condition), last_modified.and_then(parse_http_date_ms)) {
        (Some(date), Some(modified)) => date == modified,
        _ => false,
    }
}

/// Digits only; None for anything else (or more than 18 digits).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case cites the rule of RFC 9110 §14 it checks.
    #[test]
    fn byte_ranges_per_rfc_9110_14() {
        use RangeAnswer::*;
        let p = |first, last| Partial { first, last };
        let cases: [(Option<&str>, u64, RangeAnswer, &str); 16] = [
            (None, 10, Full, "no Range"),
            (Some("bytes=0-4"), 10, p(0, 4), "14.1.2 first-last"),
            (Some("bytes=5-"), 10, p(5, 9), "14.1.2 first- to the end"),
            (Some("bytes=-3"), 10, p(7, 9), "14.1.2 suffix"),
            (Some("bytes=-30"), 10, p(0, 9), "14.1.2 a suffix longer than the representation"),
            (Some("bytes=4-100"), 10, p(4, 9), "14.1.2 last past the end is clamped"),
            (Some("BYTES= 2 - 3 "), 10, p(2, 3), "units are case-insensitive"),
            (Some("bytes=10-"), 10, Unsatisfiable, "14.1.2 first at or past the end"),
            (Some("bytes=10-20"), 10, Unsatisfiable, "14.1.2 unsatisfiable"),
            (Some("bytes=-0"), 10, Unsatisfiable, "14.1.2 a zero suffix"),
            (Some("bytes=0-"), 0, Unsatisfiable, "an empty representation"),
            (Some("bytes=0-1,5-6"), 10, Full, "14.2 several ranges may get the whole"),
            (Some("bytes=5-2"), 10, Full, "14.1.1 last before first is invalid: ignored"),
            (Some("bytes=a-b"), 10, Full, "invalid: ignored"),
            (Some("items=0-1"), 10, Full, "14.1 an unknown unit is ignored"),
            (Some("bytes=1"), 10, Full, "no dash: ignored"),
        ];
        for (range, length, expect, rule) in cases {
            assert_eq!(evaluate(range.map(str::as_bytes), length), expect, "{rule}: {range:?}");
        }
    }

    /// (If-Range, the stored ETag, the stored Last-Modified, whether the range applies, the rule)
    type Case = (Option<&'static str>, Option<&'static str>, Option<&'static str>, bool, &'static str);

    #[test]
    fn if_range_per_rfc_9110_13_1_5() {
        let date = "Sat, 28 Nov 2026 07:00:00 GMT";
        let cases: [Case; 7] = [
            (None, None, None, true, "absent: the range applies"),
            (Some("\"v1\""), Some("\"v1\""), None, true, "a matching strong tag"),
            (Some("\"v1\""), Some("\"v2\""), None, false, "another tag"),
            (Some("\"v1\""), Some("W/\"v1\""), None, false, "weak tags never match"),
            (Some("W/\"v1\""), Some("W/\"v1\""), None, false, "a weak condition never matches"),
            (Some(date), None, Some(date), true, "the date equals Last-Modified"),
            (Some(date), None, Some("Sat, 28 Nov 2026 07:00:01 GMT"), false, "another date"),
        ];
        for (condition, etag, modified, expect, rule) in cases {
            let holds =
                if_range_holds(condition.map(str::as_bytes), etag.map(str::as_bytes), modified.map(str::as_bytes));
            assert_eq!(holds, expect, "{rule}");
        }
    }
}
