//! Admission to an origin on one core: a request takes one of the origin's
//! process-wide slots ([`Slots`]) for as long as its exchange lasts, or
//! waits for one in this core's share of the origin's queue, first in first
//! out, at most `--origin-queue-timeout`. One client identity holds at most
//! [`IDENTITY_SHARE_PERCENT`] of the queue, so a single heavy client is
//! refused before it fills the queue for everyone (HAProxy's `maxconn` +
//! `timeout queue` per server, with Envoy's `max_pending_requests` bound).
//!
//! A queue that stands (its oldest waiter has waited half the timeout, or
//! the work queued ahead would take a newcomer that long: waiters × mean
//! exchange time ÷ limit) refuses newcomers at once, CoDel's rule applied
//! at admission: under a sustained overload the excess is refused in
//! microseconds, and those admitted wait at most about half the timeout,
//! instead of everyone waiting the full timeout to be refused.
//!
//! A slot a finished exchange frees goes straight to the next waiter of
//! its core, unless another core has waiters too: then it goes back to the
//! shared count and that core is woken, so cores take turns. Each core
//! runs one [`Admission::pump`] task per origin that hands out slots other
//! cores freed.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use shardgate_shards::overload::{FairQueue, QueueRefusal, RetryBudget};

use crate::runtime::logging;
use crate::runtime::metrics::{Metrics, Rejection};
use crate::runtime::slots::{Rejecting, Slots};

/// The most of a core's origin queue one identity may hold.
pub const IDENTITY_SHARE_PERCENT: usize = 25;

/// One origin's admission on one core.
pub struct Admission {
    shard: u32,
    origin: usize,
    url: String,
    slots: Arc<Slots>,
    queue: RefCell<FairQueue<Rc<Waiter>>>,
    timeout: Duration,
    /// This core's retries to the origin (`--retry-budget`).
    budget: RefCell<RetryBudget>,
    /// Moving average of this core's exchanges with the origin, µs.
    exchange_us: Cell<f64>,
    metrics: Arc<Metrics>,
}

/// How a core admits requests to one origin.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionSettings {
    /// This core's share of the origin's queue.
    pub queue_entries: usize,
    pub queue_timeout: Duration,
    pub retry_budget_percent: u32,
}

struct Waiter {
    queued_at: Instant,
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Leave to send one request to the origin; the slot is freed on drop.
pub struct Permit {
    admission: Rc<Admission>,
    started: Instant,
    in_flight: u32,
}

impl Permit {
    /// The answer's head arrived (or the exchange failed); an answered one
    /// feeds `auto` its round trip. The slot stays held until the permit
    /// is dropped, which a body still streaming from the origin delays.
    pub fn record(&self, answered: bool) {
        let rtt = self.started.elapsed().as_micros() as u64;
        let average = &self.admission.exchange_us;
        average.set(if average.get() == 0.0 { rtt as f64 } else { average.get() * 0.9 + rtt as f64 * 0.1 });
        if answered {
            self.admission.slots.sample(rtt, self.in_flight);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release();
    }
}

impl Admission {
    /// Admission to origin `origin` (its index and URL) on core `shard`.
    pub fn new(
        (shard, origin, url): (u32, usize, String),
        slots: Arc<Slots>,
        settings: AdmissionSettings,
        metrics: Arc<Metrics>,
    ) -> Admission {
        let share = (settings.queue_entries * IDENTITY_SHARE_PERCENT).div_ceil(100);
        Admission {
            shard,
            origin,
            url,
            slots,
            queue: RefCell::new(FairQueue::new(settings.queue_entries, share)),
            timeout: settings.queue_timeout,
            budget: RefCell::new(RetryBudget::new(settings.retry_budget_percent)),
            exchange_us: Cell::new(0.0),
            metrics,
        }
    }

    /// Counts a first attempt toward the retry budget.
    pub fn first_attempt(&self) {
        self.budget.borrow_mut().request(self.slots.now_ms());
    }

    /// Whether the retry budget allows one more retry; counted either way.
    pub fn try_retry(&self) -> bool {
        let spent = self.budget.borrow_mut().try_retry(self.slots.now_ms());
        self.metrics.shard(self.shard).origin_retry(self.origin, spent);
        spent
    }

    /// A slot at once, or after waiting in the queue; refused when the
    /// queue (or `identity`'s share of it) is full or the wait times out.
    /// `wait: false` (the caller holds a stale copy it may serve): a slot
    /// at once or [`Rejection::StaleServed`].
    pub async fn acquire(self: &Rc<Self>, identity: u64, wait: bool) -> Result<Permit, Rejection> {
        if self.queue.borrow().is_empty() && self.slots.try_acquire() {
            if self.slots.admitted_at_once() == Some(Rejecting::Stopped) {
                logging::info("origin limit stopped rejecting", &[("origin", &self.url)]);
            }
            return Ok(self.permit());
        }
        if !wait {
            self.metrics.shard(self.shard).origin_rejected(self.origin, Rejection::StaleServed);
            return Err(Rejection::StaleServed);
        }
        // A standing queue (CoDel's signal): its oldest waiter has waited
        // half the timeout, so a newcomer behind it would most likely wait
        // in vain. Refused at once, the client learns in microseconds.
        let now = Instant::now();
        if self.standing(now) {
            return Err(self.refuse(Rejection::QueueStanding));
        }
        let waiter = Rc::new(Waiter { queued_at: now, granted: Cell::new(false), waker: RefCell::new(None) });
        let pushed = self.queue.borrow_mut().push(identity, Rc::clone(&waiter));
        let ticket = match pushed {
            Ok(ticket) => ticket,
            Err(QueueRefusal::Full) => return Err(self.refuse(Rejection::QueueFull)),
            Err(QueueRefusal::Share) => return Err(self.refuse(Rejection::QueueShare)),
        };
        let mut queued = Queued { admission: self, ticket, waiter, settled: false };
        self.publish_waiting();
        self.grant_queued();
        let granted = monoio::time::timeout(self.timeout, Granted(&queued.waiter)).await;
        queued.settled = true;
        if granted.is_err() && self.queue.borrow_mut().remove(ticket).is_some() {
            self.publish_waiting();
            return Err(self.refuse(Rejection::QueueTimeout));
        }
        Ok(self.permit())
    }

    /// Whether the queue stands: its oldest waiter has waited half the
    /// timeout, or the work queued ahead (waiters × mean exchange time ÷
    /// limit, Little's law) would take a newcomer that long.
    fn standing(&self, now: Instant) -> bool {
        let queue = self.queue.borrow();
        let half = self.timeout / 2;
        if queue.front().is_some_and(|waiter| now - waiter.queued_at >= half) {
            return true;
        }
        let ahead_us = (queue.len() + 1) as f64 * self.exchange_us.get() / f64::from(self.slots.limit().max(1));
        !queue.is_empty() && ahead_us >= half.as_micros() as f64
    }

    fn permit(self: &Rc<Self>) -> Permit {
        Permit { admission: Rc::clone(self), started: Instant::now(), in_flight: self.slots.in_flight() }
    }

    fn refuse(&self, reason: Rejection) -> Rejection {
        self.metrics.shard(self.shard).origin_rejected(self.origin, reason);
        if self.slots.rejected() == Some(Rejecting::Started) {
            logging::warn(
                "origin limit rejecting",
                &[("origin", &self.url), ("reason", &reason.name()), ("limit", &self.slots.limit())],
            );
        }
        reason
    }

    /// Hands free slots to waiters, oldest first.
    fn grant_queued(&self) {
        let mut granted = false;
        while !self.queue.borrow().is_empty() && self.slots.try_acquire() {
            match self.queue.borrow_mut().pop() {
                Some(waiter) => grant(&waiter),
                None => self.slots.release(self.shard),
            }
            granted = true;
        }
        if granted {
            self.publish_waiting();
        }
    }

    /// A finished exchange's slot: to this core's next waiter, or back.
    fn release(&self) {
        let hand_over =
            !self.queue.borrow().is_empty() && !self.slots.others_wait(self.shard) && self.slots.may_hand_over();
        let next = if hand_over { self.queue.borrow_mut().pop() } else { None };
        match next {
            Some(waiter) => {
                grant(&waiter);
                self.publish_waiting();
            }
            None => {
                self.slots.release(self.shard);
                // The limit fell under the count: this core's waiters get
                // the next slot that fits (no other core would wake them).
                if !self.slots.others_wait(self.shard) {
                    self.grant_queued();
                }
            }
        }
    }

    fn publish_waiting(&self) {
        let waiting = self.queue.borrow().len();
        self.slots.set_waiting(self.shard, waiting);
        self.metrics.shard(self.shard).origin_queue(self.origin, waiting);
    }

    /// Hands out slots other cores free, for as long as the process runs.
    pub async fn pump(self: Rc<Self>) {
        poll_fn(|cx| {
            self.slots.register(self.shard, cx.waker());
            self.grant_queued();
            Poll::<()>::Pending
        })
        .await
    }
}

fn grant(waiter: &Waiter) {
    waiter.granted.set(true);
    if let Some(waker) = waiter.waker.borrow_mut().take() {
        waker.wake();
    }
}

/// Resolves once the waiter holds a slot.
struct Granted<'a>(&'a Rc<Waiter>);

impl std::future::Future for Granted<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0.granted.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A place in the queue; a request dropped while queued (its client went
/// away) leaves the queue, or gives back the slot it was granted meanwhile.
struct Queued<'a> {
    admission: &'a Rc<Admission>,
    ticket: u64,
    waiter: Rc<Waiter>,
    settled: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let left = self.admission.queue.borrow_mut().remove(self.ticket).is_some();
        if !left && self.waiter.granted.get() {
            self.admission.release();
        }
        self.admission.publish_waiting();
    }
}

#[cfg(test)]
mod tests;
