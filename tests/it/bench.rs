//! The bench harness against the real server: a short scenario's counts add
//! up (every issued request is answered or counted as failed) and agree with
//! the server's own request counters.

use shardgate_bench::execute::run_scenario;
use shardgate_bench::report::CORE_HOUR_PRICE_DEFAULT;
use shardgate_bench::runner::{Options, Target};
use shardgate_bench::scenario::Scenario;
use shardgate_bench::workload::Api;

use crate::harness::Server;

const SCENARIO: &str = r#"
    name = "two-seconds"
    mode = "open"
    duration = "2s"
    connections = 16
    rate = 2000
    bursts = [{ at = "1s", length = "500ms", multiplier = 3 }]
    timeout = "5s"
    [workload]
    keys = 1000
    zipf = 0.99
    read_fraction = 0.8
    value_bytes = { min = 16, max = 256 }
    api_keys = 4
    preload = 500
"#;

fn kv_requests(server: &Server) -> f64 {
    server.metric("shardgate_requests_total", &[("route", "kv")])
}

#[test]
fn a_two_second_scenario_adds_up() {
    let server = Server::start(&["--shards", "2"]);
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let target = Target { addr: server.addr, api: Api::Shardgate, server_pids: Vec::new() };
    let options = Options { threads: 1, cpus: Vec::new(), progress: false, seed: 7 };
    let run = run_scenario(&scenario, &target, "shardgate", &options, CORE_HOUR_PRICE_DEFAULT, true).unwrap();
    let row = &run.rows[0];
    // 2000/s for 1.5 s plus 6000/s for 0.5 s.
    assert_eq!(row.issued, 6000);
    assert_eq!(row.issued, row.responses + row.failures, "every request answered or counted as failed");
    assert_eq!(row.failures, 0);
    assert_eq!(row.error_pct, 0.0);
    assert!(row.p50_us > 0 && row.p50_us <= row.p99_us && row.p99_us <= row.max_us);
    // The server saw the preload and every measured request.
    assert_eq!(kv_requests(&server), 500.0 + row.responses as f64);
    let (_, phase) = &run.phases[0];
    let offered: u64 = phase.series.iter().map(|s| s.offered).sum();
    let answered: u64 = phase.series.iter().map(|s| s.responses).sum();
    assert_eq!((offered, answered), (6000, 6000));
    // The burst second offered more than the others.
    assert!(phase.series[1].offered > phase.series[0].offered);
}

#[test]
fn a_closed_loop_adds_up() {
    let server = Server::start(&["--shards", "1"]);
    let scenario = Scenario::parse(
        &SCENARIO
            .replace("mode = \"open\"", "mode = \"closed\"")
            .replace("duration = \"2s\"", "duration = \"1s\"")
            .replace("bursts = [{ at = \"1s\", length = \"500ms\", multiplier = 3 }]", "pipeline = 4"),
    )
    .unwrap();
    let target = Target { addr: server.addr, api: Api::Shardgate, server_pids: Vec::new() };
    let options = Options { threads: 1, cpus: Vec::new(), progress: false, seed: 7 };
    let run = run_scenario(&scenario, &target, "shardgate", &options, CORE_HOUR_PRICE_DEFAULT, false).unwrap();
    let row = &run.rows[0];
    assert!(row.responses > 100, "{}", row.responses);
    assert_eq!(row.issued, row.responses + row.failures);
    assert_eq!(row.failures, 0);
    assert_eq!(kv_requests(&server), row.responses as f64);
}
