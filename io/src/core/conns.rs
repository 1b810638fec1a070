//! The registry of a core's open connections: their phase and deadline.
//!
//! Deadlines cost nothing per read: a connection records its phase and
//! deadline here, and the core's ticker cuts the read side of a connection
//! whose deadline passed (`shutdown(SHUT_RD)`), which ends the pending read
//! with end-of-file.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::Duration;

use slab::Slab;

/// Where a connection is in its request cycle; decides its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: closes silently at the idle timeout.
    Idle,
    /// Part of a head has arrived: 408 at the header timeout.
    Head,
    /// Waiting for body bytes: 408 when they stop coming.
    Body,
    /// Processing: no deadline.
    Busy,
    /// Writing a response: closed when the peer accepts no byte for the
    /// send timeout (nginx's `send_timeout`).
    Writing,
}

/// The registry entry of one open connection.
struct ConnTrack {
    fd: RawFd,
    phase: Phase,
    deadline_ms: u64,
    /// When the current head began arriving (0: not in a head).
    head_started_ms: u64,
    /// Set by the ticker when it cut the connection's read at its deadline.
    timed_out: bool,
}

/// How long each phase may last.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
    pub send: Duration,
}

/// Bytes of encoded output waiting to be written, across one core's
/// connections, past which connections wait before decoding more
/// requests. Large bodies are written from their shared buffers and do not
/// count (`http::response::SHARED_BODY_BYTES_MIN`).
pub const OUTPUT_BYTES_MAX: usize = 64 << 20;

/// A core's open connections, bounded by `connections_max`.
pub struct Conns {
    slab: RefCell<Slab<ConnTrack>>,
    connections_max: usize,
    timeouts: Timeouts,
    shutting_down: Cell<bool>,
    listener_fd: Cell<Option<RawFd>>,
    /// Encoded output waiting to be written, all connections together.
    output_bytes: Cell<usize>,
    /// Connections waiting for `output_bytes` to fall below the budget; at
    /// most one entry per connection.
    output_waiters: RefCell<Vec<std::task::Waker>>,
}

impl Conns {
    pub fn new(connections_max: usize, timeouts: Timeouts) -> Conns {
        Conns {
            slab: RefCell::new(Slab::with_capacity(1024.min(connections_max))),
            connections_max,
            timeouts,
            shutting_down: Cell::new(false),
            listener_fd: Cell::new(None),
            output_bytes: Cell::new(0),
            output_waiters: RefCell::new(Vec::new()),
        }
    }

    /// Registers a new connection, idle; None when the core is at its limit.
    pub fn open(&self, fd: RawFd, now_ms: u64) -> Option<usize> {
        let mut slab = self.slab.borrow_mut();
        if slab.len() >= self.connections_max {
            return None;
        }
        let deadline_ms = now_ms + self.timeouts.idle.as_millis() as u64;
        Some(slab.insert(ConnTrack { fd, phase: Phase::Idle, deadline_ms, head_started_ms: 0, timed_out: false }))
    }

    /// Removes a closed connection. Returns how many stay open.
    pub fn close(&self, key: usize) -> usize {
        let mut slab = self.slab.borrow_mut();
        slab.remove(key);
        slab.len()
    }

    pub fn len(&self) -> usize {
        self.slab.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.borrow().is_empty()
    }

    /// The connection is processing or writing: no deadline.
    pub fn set_busy(&self, key: usize) {
        let mut slab = self.slab.borrow_mut();
        let conn = &mut slab[key];
        conn.phase = Phase::Busy;
        conn.deadline_ms = 0;
    }

    /// Records the phase a read waits in and, unless the phase continues,
    /// its deadline.
    pub fn arm(&self, key: usize, phase: Phase, now_ms: u64) {
        let timeouts = self.timeouts;
        let mut slab = self.slab.borrow_mut();
        let conn = &mut slab[key];
        let deadline_ms = match phase {
            Phase::Idle => now_ms + timeouts.idle.as_millis() as u64,
            // The head deadline runs from its first byte, not from each read.
            Phase::Head if conn.head_started_ms != 0 => conn.head_started_ms + timeouts.header.as_millis() as u64,
            Phase::Head => {
                conn.head_started_ms = now_ms;
                now_ms + timeouts.header.as_millis() as u64
            }
            Phase::Body => now_ms + timeouts.body.as_millis() as u64,
            Phase::Writing => now_ms + timeouts.send.as_millis() as u64,
            Phase::Busy => 0,
        };
        if phase != Phase::Head {
            conn.head_started_ms = 0;
        }
        conn.phase = phase;
        conn.deadline_ms = deadline_ms;
    }

    /// Whether the ticker cut this connection at its deadline.
    pub fn timed_out(&self, key: usize) -> bool {
        self.slab.borrow()[key].timed_out
    }

    /// Cuts every waiting connection whose deadline passed: the read side
    /// of one waiting to read (its read then ends), both sides of one
    /// waiting to write (its write then fails). Returns how many writers
    /// it cut (send timeouts).
    pub fn cut_expired(&self, now_ms: u64) -> usize {
        let mut writers = 0;
        for (_, conn) in self.slab.borrow_mut().iter_mut() {
            if conn.phase != Phase::Busy && !conn.timed_out && conn.deadline_ms <= now_ms {
                conn.timed_out = true;
                let how = if conn.phase == Phase::Writing { libc::SHUT_RDWR } else { libc::SHUT_RD };
                writers += usize::from(conn.phase == Phase::Writing);
                // SAFETY: the fd stays open while it is in the registry.
                unsafe { libc::shutdown(conn.fd, how) };
            }
        }
        writers
    }

    /// Counts `bytes` of encoded output as waiting to be written.
    pub fn hold_output(&self, bytes: usize) {
        self.output_bytes.set(self.output_bytes.get() + bytes);
    }

    /// `bytes` of output were written (or dropped with their connection).
    pub fn release_output(&self, bytes: usize) {
        self.output_bytes.set(self.output_bytes.get() - bytes);
        if self.output_bytes.get() < OUTPUT_BYTES_MAX {
            for waker in self.output_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Whether the core's output is at its budget: connections then wait
    /// ([`Conns::output_room`]) before decoding more requests.
    pub fn output_full(&self) -> bool {
        self.output_bytes.get() >= OUTPUT_BYTES_MAX
    }

    /// Resolves once the core's output is below its budget.
    pub async fn output_room(&self) {
        std::future::poll_fn(|cx| {
            if !self.output_full() {
                return std::task::Poll::Ready(());
            }
            let mut waiters = self.output_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    pub fn set_listener(&self, fd: RawFd) {
        self.listener_fd.set(Some(fd));
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Stops accepting and closes idle connections by cutting their read
    /// side; busy ones close after their current response.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        if let Some(fd) = self.listener_fd.get() {
            // SAFETY: shutdown on a listening socket we own wakes its accept.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        for (_, conn) in self.slab.borrow().iter() {
            if conn.phase == Phase::Idle {
                // SAFETY: the fd stays open while it is in the registry.
                unsafe { libc::shutdown(conn.fd, libc::SHUT_RD) };
            }
        }
    }
}
