use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::*;

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn b(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

/// What the reader yields now: chunks until it would wait, then how it stopped.
fn drain(reader: &mut BodyReader) -> (String, &'static str) {
    let mut text = String::new();
    loop {
        match reader.poll_next(&mut cx()) {
            Poll::Ready(Some(Ok(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Poll::Ready(Some(Err(_))) => return (text, "aborted"),
            Poll::Ready(None) => return (text, "done"),
            Poll::Pending => return (text, "waiting"),
        }
    }
}

#[test]
fn keep_all_lets_readers_join_late_and_never_slows_the_writer() {
    let (writer, mut first) = channel(true, 4, Some(9));
    writer.push(b("abc"));
    assert_eq!(drain(&mut first), ("abc".into(), "waiting"));
    writer.push(b("def"));
    // Far past the window: keeping everything never asks the writer to wait.
    assert_eq!(writer.poll_room(&mut cx()), Poll::Ready(Ok(())));
    let mut late = writer.reader().expect("every chunk is held");
    writer.push(b("ghi"));
    let stored = writer.chunks().expect("all kept");
    assert_eq!(stored.concat(), b"abcdefghi");
    writer.finish();
    assert_eq!(drain(&mut late), ("abcdefghi".into(), "done"));
    assert_eq!(drain(&mut first), ("defghi".into(), "done"));
    assert_eq!(late.length(), Some(9));
}

#[test]
fn windowed_bodies_wait_for_the_slowest_reader_and_stop_without_readers() {
    let (writer, mut slow) = channel(false, 8, None);
    let mut fast = slow.clone();
    writer.push(b("12345"));
    assert_eq!(writer.poll_room(&mut cx()), Poll::Ready(Ok(())));
    writer.push(b("67890"));
    assert_eq!(writer.poll_room(&mut cx()), Poll::Pending, "10 bytes buffered, window 8");
    assert_eq!(drain(&mut fast), ("1234567890".into(), "waiting"));
    assert_eq!(writer.poll_room(&mut cx()), Poll::Pending, "the slow reader still holds them");
    assert_eq!(drain(&mut slow).0, "1234567890");
    assert_eq!(writer.poll_room(&mut cx()), Poll::Ready(Ok(())), "both read: trimmed");
    assert!(writer.reader().is_none(), "chunks were dropped: a new reader would miss them");
    drop(slow);
    drop(fast);
    assert_eq!(writer.poll_room(&mut cx()), Poll::Ready(Err(NoReaders)));
}

#[test]
fn an_aborted_or_dropped_writer_ends_readers_with_an_error() {
    let (writer, mut reader) = channel(true, 0, None);
    writer.push(b("part"));
    writer.abort();
    assert_eq!(drain(&mut reader), ("part".into(), "aborted"));
    let (writer, mut reader) = channel(false, 64, None);
    drop(writer);
    assert_eq!(drain(&mut reader), (String::new(), "aborted"));
}

#[test]
fn release_turns_a_kept_body_into_a_windowed_one() {
    let (writer, mut reader) = channel(true, 4, None);
    writer.push(b("aaaa"));
    writer.push(b("bbbb"));
    assert_eq!(drain(&mut reader).0, "aaaabbbb");
    writer.release();
    assert!(writer.chunks().is_none(), "the read chunks are gone");
    writer.push(b("cccc"));
    writer.push(b("dddd"));
    assert_eq!(writer.poll_room(&mut cx()), Poll::Pending);
    assert_eq!(drain(&mut reader).0, "ccccdddd");
    assert_eq!(writer.poll_room(&mut cx()), Poll::Ready(Ok(())));
    assert_eq!(writer.pushed_bytes(), 16);
}

#[test]
fn collect_reads_a_whole_body_within_a_bound() {
    let (writer, reader) = channel(true, 0, None);
    let second = reader.clone();
    writer.push(b("ab"));
    writer.push(b("cd"));
    writer.finish();
    let whole = futures_lite_block_on(reader.collect(4));
    assert_eq!(whole, Ok(Bytes::from_static(b"abcd")));
    assert_eq!(futures_lite_block_on(second.collect(3)), Err(BodyError::Aborted));
}

/// Polls a future that never waits (its body is complete) to its end.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx()) {
            return value;
        }
    }
}
