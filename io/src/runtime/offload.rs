//! The one way a core leaves its event loop: work handed to another thread
//! and awaited through a waker, so the loop neither blocks nor polls.
//!
//! [`Worker`] is a long-lived thread fed by a bounded queue (the cold
//! reader, a compactor's file work); [`run`] is for one-off work (a
//! shard's recovery) on a thread of its own. Both complete
//! through a [`Slot`]: the thread stores the result and wakes the waker
//! the awaiting task registered, which monoio turns into one cross-thread
//! wake-up (an eventfd write).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Where another thread leaves a result for a task on a core.
pub struct Slot<T> {
    result: Mutex<Option<T>>,
    waker: AtomicWaker,
}

impl<T> Slot<T> {
    pub fn new() -> Arc<Slot<T>> {
        Arc::new(Slot { result: Mutex::new(None), waker: AtomicWaker::new() })
    }

    /// Stores the result and wakes the awaiting task (called off the loop).
    pub fn complete(&self, result: T) {
        *self.result.lock().expect("no panics while held") = Some(result);
        self.waker.wake();
    }
}

/// Resolves to what the other thread put in its slot.
pub struct Completion<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Completion<T> {
    pub fn of(slot: &Arc<Slot<T>>) -> Completion<T> {
        Completion { slot: Arc::clone(slot) }
    }
}

impl<T> Future for Completion<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.slot.waker.register(cx.waker());
        match self.slot.result.lock().expect("no panics while held").take() {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

/// Runs `work` on a new thread named `name` and resolves to its result.
/// A panic on that thread resolves to an error instead of a hang.
pub fn run<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> impl Future<Output = io::Result<T>> {
    let slot = Slot::new();
    let completion = Completion::of(&slot);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let guard = PanicGuard(Some(Arc::clone(&slot)));
        let result = work();
        std::mem::forget(guard);
        slot.complete(result);
    });
    async move {
        spawned?;
        completion.await
    }
}

/// Completes the slot with an error when the work panics.
struct PanicGuard<T>(Option<Arc<Slot<io::Result<T>>>>);

impl<T> Drop for PanicGuard<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.complete(Err(io::Error::other("the worker thread panicked")));
        }
    }
}

/// A long-lived thread serving jobs from a bounded queue.
pub struct Worker<J> {
    jobs: mpsc::SyncSender<J>,
}

impl<J: Send + 'static> Worker<J> {
    /// Starts the thread; it runs `serve` on every job until the worker is dropped.
    pub fn spawn(name: String, queue_entries: usize, mut serve: impl FnMut(J) + Send + 'static) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<J>(queue_entries);
        std::thread::Builder::new().name(name).spawn(move || {
            for job in queue {
                serve(job);
            }
        })?;
        Ok(Worker { jobs })
    }

    /// Queues a job; gives it back when the queue is full.
    pub fn try_send(&self, job: J) -> Result<(), J> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
        })
    }
}

/// A job for a general-purpose [`Worker`].
pub type Job = Box<dyn FnOnce() + Send>;

impl Worker<Job> {
    /// A worker that runs whatever it is handed, one job at a time.
    pub fn for_jobs(name: String, queue_entries: usize) -> io::Result<Worker<Job>> {
        Worker::spawn(name, queue_entries, |job: Job| job())
    }

    /// Runs `work` on the worker's thread and resolves to its result; an
    /// error at once when the queue is full.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> impl Future<Output = io::Result<T>> {
        let slot = Slot::new();
        let completion = Completion::of(&slot);
        let job: Job = Box::new(move || {
            let guard = PanicGuard(Some(Arc::clone(&slot)));
            let result = work();
            std::mem::forget(guard);
            slot.complete(result);
        });
        let queued = self.try_send(job).map_err(|_| io::Error::other("the worker's queue is full"));
        async move {
            queued?;
            completion.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
        runtime.block_on(future)
    }

    #[test]
    fn offloaded_work_resolves_with_its_result_or_its_panic() {
        assert_eq!(block_on(run("t".into(), || Ok(7))).unwrap(), 7);
        let panicked = block_on(run::<u8>("t".into(), || panic!("on purpose")));
        assert!(panicked.is_err());
    }

    #[test]
    fn a_worker_answers_through_slots_and_refuses_past_its_queue() {
        let (gate, wait) = mpsc::channel::<()>();
        let worker = Worker::spawn("w".into(), 1, move |(n, slot): (u32, Arc<Slot<u32>>)| {
            let _ = wait.recv();
            slot.complete(n * 2);
        })
        .unwrap();
        let slots: Vec<_> = (0..2).map(|_| Slot::new()).collect();
        assert!(worker.try_send((1, Arc::clone(&slots[0]))).is_ok());
        // The thread holds the first job (waiting on the gate) or not yet:
        // at most two fit, the third cannot.
        let _ = worker.try_send((2, Arc::clone(&slots[1])));
        assert!(worker.try_send((3, Slot::new())).is_err(), "a full queue refuses");
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        assert_eq!(block_on(Completion::of(&slots[0])), 2);
    }

    #[test]
    fn a_job_worker_runs_closures_in_order() {
        let worker = Worker::for_jobs("j".into(), 4).unwrap();
        let first = worker.run(|| Ok(1));
        let second = worker.run(|| Ok(2));
        assert_eq!((block_on(first).unwrap(), block_on(second).unwrap()), (1, 2));
        assert!(block_on(worker.run::<u8>(|| panic!("on purpose"))).is_err());
    }
}
