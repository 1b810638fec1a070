//! Cross-core mailboxes: the only thing cores share.
//!
//! Each core owns one mailbox with two bounded lock-free queues: `forwards`
//! carries requests for state this core's shard owns, `replies` carries
//! answers to requests this core forwarded. A sender pushes, then wakes the
//! owner through an [`AtomicWaker`]; the owner drains everything queued per
//! wake-up, so one cross-thread wake (an eventfd write inside monoio) covers
//! a whole batch. There is no polling and no lock on the data.
//!
//! The mesh is generic over what it carries (`F` forwarded, `R` replied):
//! the server names its own messages (`core::Message`, `core::Answer`).
//!
//! Limits: a full `forwards` queue is the sender's to shed. `replies` must
//! never fill: a sender holds at most [`REPLY_QUEUE_ENTRIES`] requests in
//! flight, and each gets at most one reply.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

/// Requests queued for one shard from all others; beyond it, the sender sheds.
pub const FORWARD_QUEUE_ENTRIES: usize = 1024;
/// Forwarded requests one core may have in flight; also the reply queue size.
pub const REPLY_QUEUE_ENTRIES: usize = 4096;

/// The target shard's inbound queue is at [`FORWARD_QUEUE_ENTRIES`]; the
/// request comes back.
#[derive(Debug)]
pub struct QueueFull<F>(pub F);

struct Mailbox<F, R> {
    forwards: ArrayQueue<F>,
    replies: ArrayQueue<R>,
    waker: AtomicWaker,
}

/// All cores' mailboxes plus the process-wide flags.
pub struct Mesh<F, R> {
    mailboxes: Box<[CachePadded<Mailbox<F, R>>]>,
    shutdown: AtomicBool,
    /// Cores still draining connections during shutdown.
    draining: AtomicUsize,
    ready: AtomicBool,
    /// Shards whose recovery finished.
    recovered: AtomicUsize,
}

impl<F, R> Mesh<F, R> {
    pub fn new(shard_count: u32) -> Mesh<F, R> {
        let mailboxes = (0..shard_count)
            .map(|_| {
                CachePadded::new(Mailbox {
                    forwards: ArrayQueue::new(FORWARD_QUEUE_ENTRIES),
                    replies: ArrayQueue::new(REPLY_QUEUE_ENTRIES),
                    waker: AtomicWaker::new(),
                })
            })
            .collect();
        Mesh {
            mailboxes,
            shutdown: AtomicBool::new(false),
            draining: AtomicUsize::new(shard_count as usize),
            ready: AtomicBool::new(false),
            recovered: AtomicUsize::new(0),
        }
    }

    /// Queues a request for `target`; the request is dropped when the queue is full.
    pub fn forward(&self, target: u32, forward: F) -> Result<(), QueueFull<F>> {
        let mailbox = &self.mailboxes[target as usize];
        mailbox.forwards.push(forward).map_err(QueueFull)?;
        mailbox.waker.wake();
        Ok(())
    }

    /// Queues a reply for `source` and wakes it.
    pub fn reply(&self, source: u32, reply: R) {
        let mailbox = &self.mailboxes[source as usize];
        let pushed = mailbox.replies.push(reply);
        assert!(pushed.is_ok(), "reply queue overflow: in-flight bound broken");
        mailbox.waker.wake();
    }

    pub fn wake(&self, shard: u32) {
        self.mailboxes[shard as usize].waker.wake();
    }

    pub fn pop_forward(&self, shard: u32) -> Option<F> {
        self.mailboxes[shard as usize].forwards.pop()
    }

    pub fn pop_reply(&self, shard: u32) -> Option<R> {
        self.mailboxes[shard as usize].replies.pop()
    }

    /// Requests waiting in `shard`'s inbound queue (a gauge for /metrics).
    pub fn forward_depth(&self, shard: u32) -> usize {
        self.mailboxes[shard as usize].forwards.len()
    }

    /// Resolves when `shard`'s mailbox has work or shutdown was requested.
    pub async fn wait(&self, shard: u32, shutdown_seen: bool) {
        let mailbox = &self.mailboxes[shard as usize];
        poll_fn(|cx| {
            mailbox.waker.register(cx.waker());
            let shutdown_new = !shutdown_seen && self.shutdown.load(Ordering::Acquire);
            if shutdown_new || !mailbox.forwards.is_empty() || !mailbox.replies.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Asks every core to stop accepting and drain.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for shard in 0..self.mailboxes.len() {
            self.wake(shard as u32);
        }
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Called once by each core when its connections are gone.
    pub fn core_drained(&self) {
        self.draining.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn all_drained(&self) -> bool {
        self.draining.load(Ordering::Acquire) == 0
    }

    /// Called once by each core when its shard has recovered; the last one
    /// makes the process ready.
    pub fn shard_recovered(&self) {
        let recovered = self.recovered.fetch_add(1, Ordering::AcqRel) + 1;
        if recovered == self.mailboxes.len() {
            self.ready.store(true, Ordering::Release);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn shard_count(&self) -> u32 {
        self.mailboxes.len() as u32
    }
}

impl<F, R> Mesh<F, R> {
    /// Every shard's inbound queue depth, by shard (for /metrics).
    pub fn forward_depths(&self) -> Vec<usize> {
        (0..self.shard_count()).map(|shard| self.forward_depth(shard)).collect()
    }
}
