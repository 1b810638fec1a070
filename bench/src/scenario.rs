//! Scenario files (`bench/scenarios/*.toml`): what load to offer and how.
//!
//! ```toml
//! name = "burst-8x"
//! description = "100M/day with an 8x burst"
//! mode = "open"            # open (constant arrival rate) | closed (max throughput) | search
//! duration = "30s"
//! connections = 64
//! pipeline = 1             # requests in flight per connection
//! timeout = "2s"           # a request unanswered this long is an error
//! rate = 1157              # open: requests/s
//! bursts = [{ at = "10s", length = "10s", multiplier = 8 }]
//! [search]                 # search: highest open-loop rate with p99 <= p99_max
//! p99_max = "1ms"
//! start_rate = 20000
//! factor = 1.25
//! step = "5s"
//! steps_max = 20
//! [workload]
//! keys = 1000000
//! zipf = 0.99
//! read_fraction = 0.9
//! value_bytes = { min = 64, max = 1024 }   # or a fixed size: value_bytes = 64
//! api_keys = 100
//! preload = 100000
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::schedule::{Burst, RateProfile};
use crate::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Open,
    Closed,
    Search,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstFile {
    at: String,
    length: String,
    multiplier: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchFile {
    p99_max: String,
    start_rate: f64,
    #[serde(default = "default_factor")]
    factor: f64,
    step: String,
    #[serde(default = "default_steps_max")]
    steps_max: u32,
}

fn default_factor() -> f64 {
    1.25
}

fn default_steps_max() -> u32 {
    20
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    mode: Mode,
    #[serde(default)]
    duration: Option<String>,
    connections: usize,
    #[serde(default = "default_pipeline")]
    pipeline: usize,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    bursts: Vec<BurstFile>,
    #[serde(default)]
    search: Option<SearchFile>,
    workload: Workload,
}

fn default_pipeline() -> usize {
    1
}

fn default_timeout() -> String {
    "2s".to_string()
}

/// The search for the highest rate whose p99 stays within a bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    pub p99_max: Duration,
    pub start_rate: f64,
    pub factor: f64,
    pub step: Duration,
    pub steps_max: u32,
}

/// How load is offered.
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    Open(RateProfile),
    Closed(Duration),
    Search(Search),
}

/// A validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub load: Load,
    pub connections: usize,
    pub pipeline: usize,
    pub timeout: Duration,
    pub workload: Workload,
}

impl Scenario {
    pub fn load_file(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        file.workload.validate()?;
        if file.connections == 0 || file.pipeline == 0 {
            return Err("connections and pipeline must be at least 1".to_string());
        }
        let phase_duration = || -> Result<Duration, String> {
            duration(file.duration.as_deref().ok_or("`duration` is required for this mode")?)
        };
        let load = match file.mode {
            Mode::Open => {
                let rate = file.rate.ok_or("open mode needs `rate`")?;
                let bursts = file
                    .bursts
                    .iter()
                    .map(|b| Ok(Burst { at: duration(&b.at)?, length: duration(&b.length)?, multiplier: b.multiplier }))
                    .collect::<Result<Vec<_>, String>>()?;
                Load::Open(RateProfile::new(rate, phase_duration()?, &bursts)?)
            }
            Mode::Closed => Load::Closed(phase_duration()?),
            Mode::Search => {
                let s = file.search.as_ref().ok_or("search mode needs a [search] table")?;
                if s.start_rate <= 0.0 || s.factor <= 1.0 || s.steps_max == 0 {
                    return Err("search needs start_rate > 0, factor > 1, steps_max >= 1".to_string());
                }
                Load::Search(Search {
                    p99_max: duration(&s.p99_max)?,
                    start_rate: s.start_rate,
                    factor: s.factor,
                    step: duration(&s.step)?,
                    steps_max: s.steps_max,
                })
            }
        };
        Ok(Scenario {
            name: file.name,
            description: file.description,
            load,
            connections: file.connections,
            pipeline: file.pipeline,
            timeout: duration(&file.timeout)?,
            workload: file.workload,
        })
    }
}

/// Parses `250ms`, `10s`, `5m`.
pub fn duration(value: &str) -> Result<Duration, String> {
    let digits = value.bytes().take_while(|b| b.is_ascii_digit()).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| format!("bad duration {value:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {value:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::ValueBytes;

    const BURST: &str = r#"
        name = "burst"
        mode = "open"
        duration = "30s"
        connections = 8
        rate = 100
        bursts = [{ at = "10s", length = "5s", multiplier = 8 }]
        [workload]
        keys = 1000
        zipf = 0.99
        read_fraction = 0.9
        value_bytes = { min = 64, max = 256 }
    "#;

    #[test]
    fn parses_an_open_burst_scenario() {
        let scenario = Scenario::parse(BURST).unwrap();
        assert_eq!(scenario.pipeline, 1);
        assert_eq!(scenario.timeout, Duration::from_secs(2));
        assert_eq!(scenario.workload.value_bytes, ValueBytes::Uniform { min: 64, max: 256 });
        let Load::Open(profile) = &scenario.load else { panic!("open") };
        assert_eq!(profile.rate_at(Duration::from_secs(12)), 800.0);
        assert_eq!(profile.total(), 100 * 25 + 800 * 5);
    }

    #[test]
    fn refuses_incomplete_or_unknown_settings() {
        assert!(Scenario::parse(&BURST.replace("rate = 100", "")).unwrap_err().contains("rate"));
        assert!(Scenario::parse(&BURST.replace("rate = 100", "rate = 100\nratee = 1")).is_err());
        assert!(Scenario::parse(&BURST.replace("\"10s\"", "\"28s\"")).is_err());
        assert!(Scenario::parse(&BURST.replace("mode = \"open\"", "mode = \"search\""))
            .unwrap_err()
            .contains("[search]"));
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load_file(&path).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 6, "{seen} scenarios in {}", dir.display());
    }
}
