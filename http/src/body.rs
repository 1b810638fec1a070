//! A body that arrives over time, read by any number of readers on any
//! core: an origin response streamed to its clients while it is stored, or
//! a client's request body streamed to the origin.
//!
//! One [`BodyWriter`] pushes chunks; each [`BodyReader`] reads them in
//! order from its own position. Two modes:
//! - **keep all** (a response being stored): every chunk stays until the
//!   writer is dropped, readers may join at any time from the first byte
//!   (coalesced waiters read the same body as it arrives, Varnish's
//!   streaming and Pingora's cache-lock readers), and no reader slows the
//!   writer: a client that stops reading does not stall a fill others wait
//!   for. Its memory is the object's, bounded by `--cache-object-max`.
//! - **windowed** (a body passing through): chunks every reader has read
//!   are dropped, and the writer waits while [`BodyWriter::poll_room`]
//!   finds `window_bytes` or more buffered: memory per exchange is bounded
//!   by the window, not by the body, and a slow client slows its origin
//!   read (backpressure). With no reader left the writer learns so and
//!   stops.
//!
//! The state sits behind a mutex shared by the writer's core and the
//! readers' cores; it is held for a few pointer operations per chunk and
//! never across an await. Wake-ups go through `Waker`s, as the mesh's do.
//! Nothing here reads a clock or a socket.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Why a body ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The writer failed (the origin or client connection broke, a limit
    /// was passed) or went away before the end.
    #[error("the body ended before its end")]
    Aborted,
}

/// The writer has no reader left (windowed mode): nobody wants the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoReaders;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Open,
    Done,
    Aborted,
}

struct Slot {
    /// Index of the next chunk this reader takes.
    next: u64,
    waker: Option<Waker>,
}

struct State {
    chunks: VecDeque<Bytes>,
    /// Index of `chunks[0]` among all chunks pushed.
    first: u64,
    buffered_bytes: usize,
    pushed_bytes: u64,
    keep_all: bool,
    window_bytes: usize,
    end: End,
    readers: Vec<Option<Slot>>,
    readers_live: usize,
    writer: Option<Waker>,
    /// The body's length when announced up front (`Content-Length`).
    length: Option<u64>,
}

impl State {
    fn add_reader(&mut self, next: u64) -> usize {
        self.readers_live += 1;
        let slot = Slot { next, waker: None };
        match self.readers.iter().position(Option::is_none) {
            Some(free) => {
                self.readers[free] = Some(slot);
                free
            }
            None => {
                self.readers.push(Some(slot));
                self.readers.len() - 1
            }
        }
    }

    /// Drops the chunks every reader has taken (windowed mode only).
    fn trim(&mut self) {
        if self.keep_all {
            return;
        }
        let oldest =
            self.readers.iter().flatten().map(|slot| slot.next).min().unwrap_or(self.first + self.chunks.len() as u64);
        while self.first < oldest {
            let Some(chunk) = self.chunks.pop_front() else { break };
            self.buffered_bytes -= chunk.len();
            self.first += 1;
        }
    }

    fn wake_readers(&mut self) {
        for slot in self.readers.iter_mut().flatten() {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts the process (panic = abort),
        // so a poisoned lock cannot be observed; take the state regardless.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producing end of a body.
pub struct BodyWriter {
    shared: Arc<Shared>,
}

/// One reader of a body, at its own position.
pub struct BodyReader {
    shared: Arc<Shared>,
    slot: usize,
}

/// A new body and its first reader. `keep_all`: every chunk is kept and
/// readers never slow the writer; else at most about `window_bytes` wait
/// for the slowest reader. `length`: the body's length when known.
pub fn channel(keep_all: bool, window_bytes: usize, length: Option<u64>) -> (BodyWriter, BodyReader) {
    let mut state = State {
        chunks: VecDeque::new(),
        first: 0,
        buffered_bytes: 0,
        pushed_bytes: 0,
        keep_all,
        window_bytes,
        end: End::Open,
        readers: Vec::new(),
        readers_live: 0,
        writer: None,
        length,
    };
    let slot = state.add_reader(0);
    let shared = Arc::new(Shared { state: Mutex::new(state) });
    (BodyWriter { shared: Arc::clone(&shared) }, BodyReader { shared, slot })
}

impl BodyWriter {
    /// Appends a chunk and wakes the readers waiting for one.
    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        state.buffered_bytes += chunk.len();
        state.pushed_bytes += chunk.len() as u64;
        state.chunks.push_back(chunk);
        state.wake_readers();
    }

    /// Ready when another chunk may be pushed: always while keeping all,
    /// else once less than the window is buffered. `Err(NoReaders)` when
    /// windowed and every reader has gone.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), NoReaders>> {
        let mut state = self.shared.lock();
        if state.keep_all {
            return Poll::Ready(Ok(()));
        }
        if state.readers_live == 0 {
            return Poll::Ready(Err(NoReaders));
        }
        state.trim();
        if state.buffered_bytes < state.window_bytes {
            return Poll::Ready(Ok(()));
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for [`BodyWriter::poll_room`].
    pub async fn room(&self) -> Result<(), NoReaders> {
        poll_fn(|cx| self.poll_room(cx)).await
    }

    /// A new reader from the first byte, while every chunk is still held.
    pub fn reader(&self) -> Option<BodyReader> {
        let mut state = self.shared.lock();
        if state.first != 0 {
            return None;
        }
        let slot = state.add_reader(0);
        Some(BodyReader { shared: Arc::clone(&self.shared), slot })
    }

    /// Stops keeping every chunk: from now on the body is windowed (a
    /// response found too large to store while it streamed).
    pub fn release(&self) {
        let mut state = self.shared.lock();
        state.keep_all = false;
        state.trim();
    }

    /// Bytes pushed so far.
    pub fn pushed_bytes(&self) -> u64 {
        self.shared.lock().pushed_bytes
    }

    /// Readers still reading.
    pub fn readers(&self) -> usize {
        self.shared.lock().readers_live
    }

    /// Every chunk pushed, while all are kept (for storing the body).
    pub fn chunks(&self) -> Option<Vec<Bytes>> {
        let state = self.shared.lock();
        (state.first == 0).then(|| state.chunks.iter().cloned().collect())
    }

    /// The body is complete: readers get the end after the last chunk.
    pub fn finish(self) {
        self.end(End::Done);
    }

    /// The body cannot be completed: readers get [`BodyError::Aborted`].
    pub fn abort(self) {
        self.end(End::Aborted);
    }

    fn end(&self, end: End) {
        let mut state = self.shared.lock();
        if state.end == End::Open {
            state.end = end;
        }
        state.wake_readers();
    }
}

impl Drop for BodyWriter {
    /// A writer dropped before `finish` aborted the body.
    fn drop(&mut self) {
        self.end(End::Aborted);
    }
}

impl BodyReader {
    /// The next chunk; `None` at the end of the body.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let first = state.first;
        let available = first + state.chunks.len() as u64;
        let slot = state.readers[self.slot].as_mut().expect("a live reader has its slot");
        if slot.next < available {
            let index = (slot.next - first) as usize;
            slot.next += 1;
            let chunk = state.chunks[index].clone();
            if !state.keep_all {
                state.wake_writer();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        match state.end {
            End::Done => Poll::Ready(None),
            End::Aborted => Poll::Ready(Some(Err(BodyError::Aborted))),
            End::Open => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits for [`BodyReader::poll_next`].
    pub async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The body's length, when it was announced up front.
    pub fn length(&self) -> Option<u64> {
        self.shared.lock().length
    }

    /// Reads the rest of the body into one buffer, refusing more than
    /// `bytes_max` (a body that must be whole: a queued write).
    pub async fn collect(mut self, bytes_max: usize) -> Result<Bytes, BodyError> {
        let mut chunks = Vec::new();
        let mut total = 0;
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            total += chunk.len();
            if total > bytes_max {
                return Err(BodyError::Aborted);
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            1 => chunks.pop().expect("one chunk"),
            _ => Bytes::from(chunks.concat()),
        })
    }
}

impl Clone for BodyReader {
    /// Another reader at this one's position.
    fn clone(&self) -> BodyReader {
        let mut state = self.shared.lock();
        let next = state.readers[self.slot].as_ref().expect("a live reader has its slot").next;
        let slot = state.add_reader(next);
        BodyReader { shared: Arc::clone(&self.shared), slot }
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.readers[self.slot] = None;
        state.readers_live -= 1;
        state.trim();
        state.wake_writer();
    }
}

impl PartialEq for BodyReader {
    fn eq(&self, other: &BodyReader) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared) && self.slot == other.slot
    }
}

impl Eq for BodyReader {}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader").field("slot", &self.slot).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
