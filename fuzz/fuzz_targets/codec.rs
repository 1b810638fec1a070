//! Fuzzes the HTTP/1.1 request decoder.
//!
//! Input: two bytes choosing a split point, then the bytes of a connection.
//! The bytes are decoded request after request, once fed whole and once fed
//! in two reads split at the chosen point. Checked: no panic; `consumed` is
//! within the input and positive; bodies respect the limit; both feedings
//! decode the same requests and end in the same error or partial state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_http::codec::{Decoded, Decoder, HttpError, Limits};

const LIMITS: Limits = Limits { head_bytes_max: 1024, body_bytes_max: 512 };
const REQUESTS_MAX: usize = 64;

/// What decoding a connection's bytes produced: each request as a debug
/// string, then how it ended.
#[derive(Debug, PartialEq)]
struct Trace {
    requests: Vec<String>,
    end: Result<usize, HttpError>,
}

/// Decodes `input` as it is (all bytes available at once).
fn decode_all(input: &[u8]) -> Trace {
    let mut decoder = Decoder::new(LIMITS);
    let mut offset = 0;
    let mut requests = Vec::new();
    while requests.len() < REQUESTS_MAX {
        match decoder.decode(&input[offset..]) {
            Ok(Decoded::Complete { request, consumed }) => {
                assert!(consumed > 0 && consumed <= input.len() - offset, "consumed {consumed} of {}", input.len() - offset);
                assert!(request.body.len() <= LIMITS.body_bytes_max);
                requests.push(format!("{request:?}"));
                offset += consumed;
            }
            Ok(Decoded::Partial) => return Trace { requests, end: Ok(offset) },
            Err(error) => return Trace { requests, end: Err(error) },
        }
    }
    Trace { requests, end: Ok(offset) }
}

/// Decodes `input` delivered in two reads, the first ending at `split`.
fn decode_split(input: &[u8], split: usize) -> Trace {
    let mut decoder = Decoder::new(LIMITS);
    let mut offset = 0;
    let mut requests = Vec::new();
    let mut available = split;
    while requests.len() < REQUESTS_MAX {
        match decoder.decode(&input[offset..available]) {
            Ok(Decoded::Complete { request, consumed }) => {
                assert!(consumed > 0 && offset + consumed <= available);
                requests.push(format!("{request:?}"));
                offset += consumed;
            }
            Ok(Decoded::Partial) if available < input.len() => available = input.len(),
            Ok(Decoded::Partial) => return Trace { requests, end: Ok(offset) },
            Err(error) => return Trace { requests, end: Err(error) },
        }
    }
    Trace { requests, end: Ok(offset) }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let input = &data[2..];
    let split = usize::from(u16::from_le_bytes([data[0], data[1]])) % (input.len() + 1);
    let whole = decode_all(input);
    let split_trace = decode_split(input, split);
    if whole.requests.len() < REQUESTS_MAX && split_trace.requests.len() < REQUESTS_MAX {
        assert_eq!(whole, split_trace, "split at {split}");
    }
});
