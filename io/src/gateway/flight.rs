//! One fetch of a key in progress, and the requests waiting for it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use shardgate_http::response::Response;

use crate::runtime::metrics::CacheResult;

/// What a fetch left for the requests that waited on it.
#[derive(Clone)]
pub(super) enum Shared {
    /// Look the cache up again (stored, refreshed, or hit-for-miss marked).
    Lookup,
    /// The exchange failed before any answer (connect error, timeout, open
    /// circuit); this is shardgate's own error response, the same for every
    /// waiter (stale-if-error still applies per waiter).
    Failed(Response),
    /// The origin answered with a server error. That answer was for the
    /// first requester: a waiter gets a stale copy where stale-if-error
    /// allows, else asks the origin itself.
    Answered,
}

/// Fetches one shard runs at once (one per key); a miss past it gets 503.
pub(super) const FLIGHTS_MAX: usize = 4096;
/// Requests waiting on one fetch; past it, 503.
pub(super) const FLIGHT_WAITERS_MAX: usize = 1024;

/// One fetch of a key in progress, and the requests waiting for it.
pub(super) struct Flight {
    pub(super) done: RefCell<Option<(Response, CacheResult, Shared)>>,
    /// The wakers of the requests waiting for the fetch: at most one per
    /// waiter, so at most [`FLIGHT_WAITERS_MAX`].
    pub(super) waiters: RefCell<Vec<Waker>>,
    /// Requests waiting now (each holds a [`Waiting`]).
    waiting: Cell<usize>,
}

impl Flight {
    pub(super) fn new() -> Flight {
        Flight { done: RefCell::new(None), waiters: RefCell::new(Vec::new()), waiting: Cell::new(0) }
    }

    /// Takes a waiter's place, or None when [`FLIGHT_WAITERS_MAX`] wait.
    pub(super) fn wait(self: &Rc<Self>) -> Option<Waiting> {
        if self.waiting.get() >= FLIGHT_WAITERS_MAX {
            return None;
        }
        self.waiting.set(self.waiting.get() + 1);
        Some(Waiting { flight: Rc::clone(self) })
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

/// Resolves when the flight is done: to its first requester's answer
/// (`first`), or to what the others share.
pub(super) struct FlightWait {
    pub(super) flight: Rc<Flight>,
}

impl Future for FlightWait {
    type Output = (Response, CacheResult, Shared);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &*self.flight.done.borrow() {
            Some(done) => Poll::Ready(done.clone()),
            None => {
                self.flight.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
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
