//! One fetch of a key in progress, and the requests waiting for it.
//!
//! The fetch settles once the origin's answer *head* is in: the first
//! requester takes its answer then, and every waiter learns what to do
//! ([`Shared`]); a body still arriving is read by each of them from its
//! first byte while it is stored (Varnish's streaming, Pingora's cache-lock
//! readers), so nobody waits for a large body to finish before its first
//! byte.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use shardgate_http::response::Response;

use super::serve::Facts;
use crate::runtime::metrics::CacheResult;

/// What a fetch leaves for the requests that waited on it.
#[derive(Clone)]
pub(super) enum Shared {
    /// Look the cache up again (stored, refreshed, or hit-for-miss marked).
    Lookup,
    /// The answer is being stored while its body arrives: each waiter reads
    /// this response, its body from the first byte.
    Stream(Response, Facts),
    /// The exchange failed before any answer (connect error, timeout, open
    /// circuit); this is shardgate's own error response, the same for every
    /// waiter (stale-if-error still applies per waiter).
    Failed(Response),
    /// The origin answered with something not stored (a server error, a
    /// body too large to store). That answer was for the first requester:
    /// a waiter gets a stale copy where stale-if-error allows, else asks
    /// the origin itself.
    Answered,
}

/// The first requester's answer.
pub(super) struct First {
    pub response: Response,
    pub result: CacheResult,
    pub facts: Facts,
}

/// Fetches one shard runs at once (one per key); a miss past it gets 503.
pub(super) const FLIGHTS_MAX: usize = 4096;
/// Requests waiting on one fetch; past it, 503.
pub(super) const FLIGHT_WAITERS_MAX: usize = 1024;

/// One fetch of a key in progress, and the requests waiting for it.
pub(super) struct Flight {
    first: RefCell<Option<First>>,
    /// Set once the answer's head is in (or the fetch failed).
    shared: RefCell<Option<Shared>>,
    /// The wakers of the requests waiting for the fetch: at most one per
    /// waiter, so at most [`FLIGHT_WAITERS_MAX`].
    waiters: RefCell<Vec<Waker>>,
    /// Requests waiting now (each holds a [`Waiting`]).
    waiting: Cell<usize>,
}

impl Flight {
    pub(super) fn new() -> Flight {
        Flight {
            first: RefCell::new(None),
            shared: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
        }
    }

    /// Takes a waiter's place, or None when [`FLIGHT_WAITERS_MAX`] wait.
    pub(super) fn wait(self: &Rc<Self>) -> Option<Waiting> {
        if self.waiting.get() >= FLIGHT_WAITERS_MAX {
            return None;
        }
        self.waiting.set(self.waiting.get() + 1);
        Some(Waiting { flight: Rc::clone(self) })
    }

    /// The answer's head is in: hands the first requester its answer and
    /// the waiters theirs, and wakes them all.
    pub(super) fn settle(&self, first: First, shared: Shared) {
        *self.first.borrow_mut() = Some(first);
        *self.shared.borrow_mut() = Some(shared);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// What later waiters get changes (a stored stream turned out too
    /// large: they must not read it from a copy that pins its first byte).
    pub(super) fn reshare(&self, shared: Shared) {
        *self.shared.borrow_mut() = Some(shared);
    }

    pub(super) fn settled(&self) -> bool {
        self.shared.borrow().is_some()
    }
}

/// A waiter's place on a flight, given back when dropped.
pub(super) struct Waiting {
    flight: Rc<Flight>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.flight.waiting.set(self.flight.waiting.get() - 1);
    }
}

/// Resolves when the flight has settled: for the first requester to its
/// answer, for the others to what they share.
pub(super) struct FlightWait {
    pub(super) flight: Rc<Flight>,
    pub(super) first: bool,
}

/// What a [`FlightWait`] resolves to.
pub(super) enum Settled {
    First(First),
    Shared(Shared),
}

impl Future for FlightWait {
    type Output = Settled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Settled> {
        if !self.flight.settled() {
            self.flight.waiters.borrow_mut().push(cx.waker().clone());
            return Poll::Pending;
        }
        if self.first {
            if let Some(first) = self.flight.first.borrow_mut().take() {
                return Poll::Ready(Settled::First(first));
            }
        }
        let shared = self.flight.shared.borrow().clone().expect("settled");
        Poll::Ready(Settled::Shared(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flight_takes_at_most_its_bound_of_waiters_and_gets_places_back() {
        let flight = Rc::new(Flight::new());
        let places: Vec<Waiting> = (0..FLIGHT_WAITERS_MAX).map(|_| flight.wait().expect("a place")).collect();
        assert!(flight.wait().is_none(), "the bound holds");
        drop(places);
        assert!(flight.wait().is_some(), "places come back when waiters leave");
    }
}
