//! Fuzzes the origin response decoder (`shardgate_http::origin`).
//!
//! Input: two bytes choosing a split point, one byte choosing whether a
//! body is expected (a HEAD's answer has none), then the bytes an origin
//! sends. They are decoded whole and in two reads split at the chosen
//! point. Checked: no panic; a complete response ends within the input;
//! its body respects the limit; both feedings agree on where the message
//! ends and on its status and body; and the streaming body decoder (the
//! gateway's path for long bodies), fed the same bytes in two pieces,
//! finds the same body and the same end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_http::origin::{parse_head, BodyFraming, BodyStep, ResponseError, RESPONSE_BYTES_MAX};

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
    if !matches!(head.framing, BodyFraming::UntilClose) {
        let (streamed, used) = stream(&head.body_decoder(), &buffer[head.length..], (end - head.length) / 2);
        assert_eq!((streamed, head.length + used), (body.clone(), end), "the streaming decoder disagrees");
    }
    let response = head.take_response(body.clone().into());
    Ok(Some((response.status, body, skipped + end)))
}

/// The body the streaming decoder finds in `after_head`, fed in two pieces
/// split at `split`, and the bytes it used. It must reach the body's end:
/// the buffered decoder found it there.
fn stream(decoder: &shardgate_http::origin::BodyDecoder, after_head: &[u8], split: usize) -> (Vec<u8>, usize) {
    let mut decoder = decoder.clone();
    let mut pending = bytes::BytesMut::from(&after_head[..split]);
    let mut body = Vec::new();
    let mut fed = split;
    loop {
        match decoder.step(&mut pending).expect("the buffered decoder accepted it") {
            BodyStep::Data(data) => body.extend_from_slice(&data),
            BodyStep::End => return (body, fed - pending.len()),
            BodyStep::More => {
                assert!(fed < after_head.len(), "the body's end is in the input");
                pending.extend_from_slice(&after_head[fed..]);
                fed = after_head.len();
            }
        }
    }
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
