use std::time::Duration;

use super::*;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
    runtime.block_on(future)
}

fn admission(limit: u32, queue_entries: usize, timeout_ms: u64) -> Rc<Admission> {
    let settings =
        AdmissionSettings { queue_entries, queue_timeout: Duration::from_millis(timeout_ms), retry_budget_percent: 20 };
    let metrics = Arc::new(Metrics::new(1).with_origins(vec!["o".into()]));
    Rc::new(Admission::new((0, 0, "o".into()), Arc::new(Slots::new(Some(limit), 1)), settings, metrics))
}

#[test]
fn slots_beyond_the_limit_wait_in_order_and_time_out() {
    block_on(async {
        let admission = admission(1, 8, 50);
        let first = admission.acquire(1, true).await.expect("a free slot");
        let (a, b) = (Rc::clone(&admission), Rc::clone(&admission));
        let order = Rc::new(RefCell::new(Vec::new()));
        let (o1, o2) = (Rc::clone(&order), Rc::clone(&order));
        let second = monoio::spawn(async move {
            let permit = a.acquire(2, true).await;
            o1.borrow_mut().push(2);
            permit
        });
        let third = monoio::spawn(async move {
            let permit = b.acquire(3, true).await;
            o2.borrow_mut().push(3);
            permit
        });
        monoio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(admission.queue.borrow().len(), 2, "both wait");
        drop(first);
        let second = second.await.expect("granted when the first finished");
        assert_eq!(*order.borrow(), [2], "first in, first out");
        assert!(matches!(third.await, Err(Rejection::QueueTimeout)), "the third waited past the timeout");
        assert_eq!(admission.slots.in_flight(), 1);
        drop(second);
        assert_eq!(admission.slots.in_flight(), 0, "every slot came back");
        assert!(admission.queue.borrow().is_empty());
    });
}

#[test]
fn one_identity_holds_its_share_and_a_full_queue_refuses_at_once() {
    block_on(async {
        let admission = admission(1, 8, 1000);
        let _held = admission.acquire(1, true).await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let a = Rc::clone(&admission);
            waiting.push(monoio::spawn(async move { a.acquire(7, true).await.map(drop) }));
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(admission.acquire(7, true).await, Err(Rejection::QueueShare)), "25% of 8 places is 2");
        for identity in 10..16 {
            let a = Rc::clone(&admission);
            waiting.push(monoio::spawn(async move { a.acquire(identity, true).await.map(drop) }));
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(admission.acquire(99, true).await, Err(Rejection::QueueFull)));
        let metrics = admission.metrics.render(&[0], true, &[]);
        assert!(metrics.contains("reason=\"queue_share\"} 1") && metrics.contains("reason=\"queue_full\"} 1"));
    });
}

#[test]
fn a_waiter_that_goes_away_leaves_no_slot_behind() {
    block_on(async {
        let admission = admission(1, 8, 1000);
        let held = admission.acquire(1, true).await.unwrap();
        let a = Rc::clone(&admission);
        // Dropped while queued: its place goes.
        let gone =
            monoio::time::timeout(Duration::from_millis(5), async move { a.acquire(2, true).await.map(drop) }).await;
        assert!(gone.is_err());
        assert!(admission.queue.borrow().is_empty(), "the place left with its request");
        drop(held);
        assert_eq!(admission.slots.in_flight(), 0);
        assert!(admission.acquire(3, true).await.is_ok(), "and the slot is free");
    });
}

#[test]
fn the_retry_budget_counts_first_attempts() {
    let admission = admission(1, 0, 1);
    assert!((0..3).all(|_| admission.try_retry()), "the minimum");
    assert!(!admission.try_retry());
    for _ in 0..50 {
        admission.first_attempt();
    }
    assert_eq!((0..20).filter(|_| admission.try_retry()).count(), 7, "20% of 50 = 10, 3 spent");
}

#[test]
fn a_standing_queue_refuses_newcomers_at_once() {
    block_on(async {
        let admission = admission(1, 8, 100);
        let _held = admission.acquire(1, true).await.unwrap();
        let a = Rc::clone(&admission);
        let first = monoio::spawn(async move { a.acquire(2, true).await.map(drop) });
        monoio::time::sleep(Duration::from_millis(60)).await;
        let started = Instant::now();
        assert!(matches!(admission.acquire(3, true).await, Err(Rejection::QueueStanding)));
        assert!(started.elapsed() < Duration::from_millis(40), "refused without waiting");
        assert!(matches!(first.await, Err(Rejection::QueueTimeout)));
    });
}
