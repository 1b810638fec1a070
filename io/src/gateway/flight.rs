//! One fetch of a key in progress, and the requests waiting for it.

use std::cell::RefCell;
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

/// One fetch of a key in progress, and the requests waiting for it.
pub(super) struct Flight {
    pub(super) done: RefCell<Option<(Response, CacheResult, Shared)>>,
    /// The requests waiting for the fetch. Unbounded by design: every one
    /// is a request already admitted by the core's connection bound.
    pub(super) waiters: RefCell<Vec<Waker>>,
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
