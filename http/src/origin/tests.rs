use bytes::Bytes;

use super::*;

/// Feeds `response` to the head parser and the body framing in one piece;
/// returns the response and whether its connection may be reused.
fn check(response: &[u8], expect_body: bool) -> Result<Option<(OriginResponse, bool)>, ResponseError> {
    let mut input = response.to_vec();
    let Some(mut head) = parse_head(&mut input, expect_body)? else {
        return Ok(None);
    };
    let mut chunked_body = Vec::new();
    let Some(end) = head.body_end(&input, &mut chunked_body)? else {
        return Ok(None);
    };
    let body = match head.framing {
        BodyFraming::Chunked(_) => Bytes::from(chunked_body),
        _ => Bytes::copy_from_slice(&input[head.length..end]),
    };
    let reusable = head.keep_alive && !matches!(head.framing, BodyFraming::UntilClose);
    Ok(Some((head.take_response(body), reusable)))
}

#[test]
fn content_length_and_end_to_end_fields() {
    let raw = b"HTTP/1.1 201 Made\r\nContent-Length: 3\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                Date: Sat, 28 Nov 2026 07:00:00 GMT\r\nAge: 7\r\nCache-Control: max-age=5\r\nCache-Control: public\r\n\
                ETag: \"e\"\r\nX-End: 2\r\n\r\nabc";
    let (response, reusable) = check(raw, true).unwrap().unwrap();
    assert_eq!(
        (response.status, &response.reason[..], &response.body[..], reusable),
        (201, &b"Made"[..], &b"abc"[..], true)
    );
    assert_eq!(
        std::str::from_utf8(&response.headers).unwrap(),
        "\r\nCache-Control: max-age=5\r\nCache-Control: public\r\nETag: \"e\"\r\nX-End: 2"
    );
    assert_eq!(response.fields.cache_control.as_deref(), Some(&b"max-age=5, public"[..]));
    assert_eq!(response.fields.age.as_deref(), Some(&b"7"[..]));
    assert!(check(&raw[..raw.len() - 1], true).unwrap().is_none(), "a short body waits");
}

#[test]
fn chunked_interim_head_and_close_delimited() {
    let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n";
    let (response, reusable) = check(chunked, true).unwrap().unwrap();
    assert_eq!((&response.body[..], reusable), (&b"abcde"[..], true));
    assert!(!response.headers.windows(17).any(|w| w.eq_ignore_ascii_case(b"transfer-encoding")));
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    assert_eq!(&check(head, false).unwrap().unwrap().0.body[..], b"", "a HEAD answer has no body");
    let not_modified = b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n";
    assert_eq!(check(not_modified, true).unwrap().unwrap().0.status, 304);
    let until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
    assert!(check(until_close, true).unwrap().is_none(), "a close-delimited body ends at EOF");
}

#[test]
fn malformed_responses_are_errors() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        assert!(check(raw, true).is_err(), "{}", String::from_utf8_lossy(raw));
    }
    // A body of any length parses: the gateway streams what it does not buffer.
    let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", u64::from(u32::MAX) * 4);
    let head = parse_head(&mut huge.into_bytes(), true).unwrap().unwrap();
    assert_eq!(head.body_length(), Some(u64::from(u32::MAX) * 4));
}

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    /// A response, its body (None: it runs to the close) and whether its
    /// connection may carry another exchange.
    type Case = (&'static [u8], Option<&'static [u8]>, bool);
    let cases: [Case; 5] = [
        // Content-Length and Transfer-Encoding: chunked wins, the connection closes after.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            Some(b"hi"),
            false,
        ),
        // A final coding other than chunked: until close.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw", None, false),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nraw", None, false),
        // A list of equal lengths is one length.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", Some(b"ok"), true),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            Some(b"x"),
            true,
        ),
    ];
    for (raw, body, reusable) in cases {
        let got = check(raw, true).unwrap().map(|(response, reusable)| (response.body.to_vec(), reusable));
        let want = body.map(|b| (b.to_vec(), reusable));
        assert_eq!(got, want, "{}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn content_length_is_digits_only() {
    for bad in ["+5", "-1", "5 5", "0x10", "", "1,2", "99999999999999999999"] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
        assert!(check(raw.as_bytes(), true).is_err(), "Content-Length: {bad}");
    }
}

#[test]
fn the_raw_bytes_of_a_chunked_body_are_bounded() {
    let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let head = raw.len();
    // One-byte chunks with long extensions: little body, many raw bytes.
    let chunk = format!("1;{}\r\nx\r\n", "e".repeat(1000));
    while raw.len() - head <= RESPONSE_RAW_BYTES_MAX {
        raw.extend_from_slice(chunk.as_bytes());
    }
    let result = check(&raw, true).map(|r| r.map(|(response, _)| response.body.len()));
    assert!(matches!(result, Err(ResponseError::TooLarge)), "{result:?}");
}

/// Streams the body after `raw`'s head through `BodyDecoder`, the input
/// arriving in pieces of `split` bytes; returns the body, whether it ended
/// (rather than waiting for more), and what was left after it.
fn stream(raw: &[u8], split: usize) -> Result<(Vec<u8>, bool, Vec<u8>), ResponseError> {
    let mut input = raw.to_vec();
    let head = parse_head(&mut input, true)?.expect("a complete head");
    let mut decoder = head.body_decoder();
    let mut pending = bytes::BytesMut::new();
    let mut body = Vec::new();
    let after_head = &input[head.length..];
    for (i, piece) in after_head.chunks(split.max(1)).enumerate() {
        pending.extend_from_slice(piece);
        loop {
            match decoder.step(&mut pending)? {
                BodyStep::Data(data) => body.extend_from_slice(&data),
                BodyStep::More => break,
                BodyStep::End => {
                    // What is left: the rest of this piece and every later one.
                    let fed = ((i + 1) * split.max(1)).min(after_head.len());
                    pending.extend_from_slice(&after_head[fed..]);
                    return Ok((body, true, pending.to_vec()));
                }
            }
        }
    }
    let ended = matches!(decoder.step(&mut pending)?, BodyStep::End);
    Ok((body, ended, pending.to_vec()))
}

/// (the raw response, its body, whether the body ends by itself, what follows it)
type StreamCase = (&'static [u8], &'static [u8], bool, &'static [u8]);

#[test]
fn streamed_bodies_decode_the_same_whatever_the_reads() {
    let cases: [StreamCase; 4] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT", b"hello", true, b"NEXT"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\nNEXT",
            b"abcde",
            true,
            b"NEXT",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"", true, b""),
        // To the close: never ends by itself.
        (b"HTTP/1.1 200 OK\r\n\r\nall of it", b"all of it", false, b""),
    ];
    for (raw, body, ended, rest) in cases {
        for split in 1..raw.len() {
            let (got, got_ended, got_rest) = stream(raw, split).unwrap();
            assert_eq!((&got[..], got_ended, &got_rest[..]), (body, ended, rest), "split {split}");
        }
    }
}

#[test]
fn streamed_bodies_refuse_bad_framing() {
    let bad: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n",
    ];
    for raw in bad {
        assert!(stream(raw, 64).is_err(), "{}", String::from_utf8_lossy(raw));
    }
    let mut input = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc".to_vec();
    let head = parse_head(&mut input, true).unwrap().unwrap();
    assert_eq!(head.body_length(), Some(9));
    let mut decoder = head.body_decoder();
    let mut pending = bytes::BytesMut::from(&input[head.length..]);
    assert_eq!(decoder.step(&mut pending), Ok(BodyStep::Data(Bytes::from_static(b"abc"))));
    assert!(decoder.at_eof().is_err(), "a short body is an error at the close");
}
