//! Running a whole scenario: preload, then its phase or, for a search, one
//! phase per rate step.

use anyhow::Result;

use crate::report::Row;
use crate::runner::{preload, run_phase, Offered, Options, PhaseResult, Target};
use crate::scenario::{Load, Scenario, Search};
use crate::schedule::RateProfile;

/// What a scenario produced.
pub struct ScenarioRun {
    pub rows: Vec<Row>,
    /// Each phase with its label (the scenario name, or the rate step).
    pub phases: Vec<(String, PhaseResult)>,
    /// For a search: the highest rate that met the bound.
    pub max_sustainable_rps: Option<f64>,
}

pub fn run_scenario(
    scenario: &Scenario,
    target: &Target,
    server: &str,
    options: &Options,
    core_hour_price: f64,
    do_preload: bool,
) -> Result<ScenarioRun> {
    if do_preload {
        preload(target, &scenario.workload, scenario.connections)?;
    }
    let mut run = ScenarioRun { rows: Vec::new(), phases: Vec::new(), max_sustainable_rps: None };
    let phase = |offered: &Offered| {
        run_phase(
            target,
            offered,
            scenario.connections,
            scenario.pipeline,
            scenario.timeout,
            &scenario.workload,
            options,
        )
    };
    match &scenario.load {
        Load::Open(profile) => {
            let result = phase(&Offered::Open(profile.clone()))?;
            let offered = profile.total() as f64 / profile.duration().as_secs_f64();
            run.rows.push(Row::new(&scenario.name, server, &result, Some(offered), core_hour_price));
            run.phases.push((scenario.name.clone(), result));
        }
        Load::Closed(duration) => {
            let result = phase(&Offered::Closed(*duration))?;
            run.rows.push(Row::new(&scenario.name, server, &result, None, core_hour_price));
            run.phases.push((scenario.name.clone(), result));
        }
        Load::Search(search) => search_steps(scenario, search, server, core_hour_price, &mut run, phase)?,
    }
    Ok(run)
}

/// Raises the rate by `factor` per step while p99 stays within the bound,
/// there are no errors and the server keeps up with what is offered.
fn search_steps(
    scenario: &Scenario,
    search: &Search,
    server: &str,
    core_hour_price: f64,
    run: &mut ScenarioRun,
    phase: impl Fn(&Offered) -> Result<PhaseResult>,
) -> Result<()> {
    let mut rate = search.start_rate;
    for _ in 0..search.steps_max {
        let profile = RateProfile::new(rate, search.step, &[]).map_err(anyhow::Error::msg)?;
        let result = phase(&Offered::Open(profile))?;
        let label = format!("{} @ {rate:.0}/s", scenario.name);
        let row = Row::new(&label, server, &result, Some(rate), core_hour_price);
        let passed = meets(&row, search, rate);
        eprintln!(
            "{label}: p99 {} µs, errors {:.2}% -> {}",
            row.p99_us,
            row.error_pct,
            if passed { "pass" } else { "fail" }
        );
        run.rows.push(row);
        run.phases.push((label, result));
        if !passed {
            break;
        }
        run.max_sustainable_rps = Some(rate);
        rate *= search.factor;
    }
    Ok(())
}

/// A step passes when p99 is within the bound, nothing failed, and at least
/// 95% of the offered rate was answered.
fn meets(row: &Row, search: &Search, rate: f64) -> bool {
    row.p99_us as u128 <= search.p99_max.as_micros() && row.error_pct == 0.0 && row.throughput_rps >= 0.95 * rate
}
