//! Fuzzes the origin response decoder (`shardgate_http::origin`).
//!
//! Input: two bytes choosing a split point, one byte choosing whether a
//! body is expected (a HEAD's answer has none), then the bytes an origin
//! sends. They are decoded whole and in two reads split at the chosen
//! point. Checked: no panic; a complete response ends within the input;
//! its body respects the limit; both feedings agree on where the message
//! ends and on its status and body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_http::origin::{parse_head, BodyFraming, ResponseError, RESPONSE_BYTES_MAX};

/// How decoding one response went: (status, body, end offset) when complete.
type Outcome = Result<Option<(u16, Vec<u8>, usize)>, ResponseError>;

fn decode(input: &[u8], available: usize, expect_body: bool) -> Outcome {
    let mut buffer = input[..available].to_vec();
    let Some(mut head) = parse_head(&mut buffer, expect_body)? else {
        return Ok(None);
    };
    // Interim responses were drained from the front: the rest of the input follows.
    let skipped = available - buffer.len();
    buffer.extend_from_slice(&input[available..]);
    let mut chunked_body = Vec::new();
    let Some(end) = head.body_end(&buffer, &mut chunked_body)? else {
        return Ok(None);
    };
    assert!(end <= buffer.len() && end >= head.length, "end {end} outside {}", buffer.len());
    let body = match head.framing {
        BodyFraming::Chunked(_) => chunked_body,
        _ => buffer[head.length..end].to_vec(),
    };
    assert!(body.len() <= RESPONSE_BYTES_MAX);
    let response = head.take_response(body.clone().into());
    Ok(Some((response.status, body, skipped + end)))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let expect_body = data[2] & 1 == 1;
    let input = &data[3..];
    let split = usize::from(u16::from_le_bytes([data[0], data[1]])) % (input.len() + 1);
    let whole = decode(input, input.len(), expect_body);
    // Fed in two reads: the head parser sees a prefix first, then all of it.
    let split_outcome = match decode(input, split, expect_body) {
        Ok(None) => decode(input, input.len(), expect_body),
        other => other,
    };
    if let (Ok(Some(a)), Ok(Some(b))) = (&whole, &split_outcome) {
        assert_eq!(a, b, "split at {split}");
    }
});
