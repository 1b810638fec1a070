use std::cell::Cell;

use shardgate_shards::breaker::Breaker;

use super::*;

#[test]
fn errors_map_to_their_statuses() {
    assert_eq!(OriginError::Timeout.response().status, 504);
    assert_eq!(OriginError::ConnectTimeout.response().status, 502);
    assert_eq!(OriginError::from(ResponseError::Malformed("x")).response().status, 502);
    let open = OriginError::CircuitOpen.response();
    assert_eq!((open.status, open.retry_after_s), (503, Some(1)));
}

#[test]
fn pick_rotates_over_healthy_admitted_origins() {
    let address =
        |port| OriginAddress { url: format!("http://127.0.0.1:{port}"), address: ([127, 0, 0, 1], port).into() };
    let health = || std::sync::Arc::new(Health::new(std::time::Duration::from_secs(1)));
    let origins: Vec<Origin> =
        (1..=3).map(|p| Origin::new(address(p), Breaker::new(1, 1000), admission(p), health())).collect();
    let next = Cell::new(0);
    let picks: Vec<usize> = (0..6).map(|_| pick(&origins, &next, 0).unwrap().0).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    origins[1].health.set(false);
    origins[2].breaker.borrow_mut().record(0, false, false);
    let picks: Vec<usize> = (0..3).map(|_| pick(&origins, &next, 10).unwrap().0).collect();
    assert_eq!(picks, [0, 0, 0], "unhealthy and open origins are skipped");
    origins[0].health.set(false);
    let picks: Vec<usize> = (0..3).map(|_| pick(&origins, &next, 10).unwrap().0).collect();
    assert!(picks.contains(&0) && picks.contains(&1) && !picks.contains(&2), "unhealthy beats none: {picks:?}");
    for origin in &origins {
        origin.breaker.borrow_mut().record(20, false, false);
    }
    assert!(matches!(pick(&origins, &next, 30), Err(OriginError::CircuitOpen)));
    assert_eq!(pick(&origins, &next, 1020).map(|(_, probe)| probe).ok(), Some(true), "half-open: a probe");
}

fn admission(port: u16) -> std::rc::Rc<crate::admission::Admission> {
    use std::sync::Arc;
    let settings = crate::admission::AdmissionSettings {
        queue_entries: 1,
        queue_timeout: std::time::Duration::from_secs(1),
        retry_budget_percent: 20,
    };
    let metrics = Arc::new(crate::runtime::metrics::Metrics::new(1));
    let slots = Arc::new(crate::runtime::slots::Slots::new(Some(1), 1));
    std::rc::Rc::new(crate::admission::Admission::new((0, 0, port.to_string()), slots, settings, metrics))
}
