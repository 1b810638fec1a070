//! Reporting a run: one row per phase in the seed's columns, as Markdown
//! and JSON, and an SVG chart of the phase second by second.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::runner::{PhaseResult, Second};

/// Default price of one vCPU-hour: AWS EC2 c7i.large on-demand, Linux,
/// us-east-1, $0.08925 per hour for 2 vCPUs (AWS public price list, 2024).
pub const CORE_HOUR_PRICE_DEFAULT: f64 = 0.08925 / 2.0;

/// One line of the results table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub server: String,
    /// Mean offered rate (open loop), requests/s.
    pub offered_rps: Option<f64>,
    pub throughput_rps: f64,
    pub issued: u64,
    pub responses: u64,
    pub failures: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub error_pct: f64,
    pub status_429_pct: f64,
    pub status_503_pct: f64,
    pub cpu_us_per_request: Option<f64>,
    pub dollars_per_100m: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// p99 of how late the generator sent requests (open loop), µs.
    pub generator_lag_p99_us: u64,
}

impl Row {
    pub fn new(
        scenario: &str,
        server: &str,
        phase: &PhaseResult,
        offered_rps: Option<f64>,
        core_hour_price: f64,
    ) -> Row {
        let stats = &phase.stats;
        let latency = &stats.latency_us;
        let q = |q: f64| if latency.is_empty() { 0 } else { latency.value_at_quantile(q) };
        let issued = phase.issued.max(1) as f64;
        let cpu_us_per_request = phase
            .server_cpu
            .filter(|_| stats.responses > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / stats.responses as f64);
        Row {
            scenario: scenario.to_string(),
            server: server.to_string(),
            offered_rps,
            throughput_rps: stats.responses as f64 / phase.elapsed.as_secs_f64(),
            issued: phase.issued,
            responses: stats.responses,
            failures: stats.failures,
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: latency.max(),
            error_pct: 100.0 * stats.errors() as f64 / issued,
            status_429_pct: 100.0 * stats.status_429 as f64 / issued,
            status_503_pct: 100.0 * stats.status_503 as f64 / issued,
            cpu_us_per_request,
            dollars_per_100m: cpu_us_per_request.map(|us| dollars_per_100m(us, core_hour_price)),
            rss_bytes: phase.server_rss_peak,
            generator_lag_p99_us: if phase.lag_us.is_empty() { 0 } else { phase.lag_us.value_at_quantile(0.99) },
        }
    }
}

/// Compute cost of 100 million requests at `cpu_us` CPU-µs each.
pub fn dollars_per_100m(cpu_us: f64, core_hour_price: f64) -> f64 {
    cpu_us * 1e8 / 3.6e9 * core_hour_price
}

/// Formats microseconds the way people read latency.
pub fn duration_text(us: u64) -> String {
    match us {
        0..=9_999 => format!("{us} µs"),
        10_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn optional(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or("–".to_string(), format)
}

/// The results table in the seed's columns.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | server | offered/s | throughput/s | p50 | p99 | p99.9 | p99.99 | max | error % | 429 % | 503 % | CPU µs/req | $ per 100M | RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            r.scenario,
            r.server,
            optional(r.offered_rps, |v| format!("{v:.0}")),
            r.throughput_rps,
            duration_text(r.p50_us),
            duration_text(r.p99_us),
            duration_text(r.p999_us),
            duration_text(r.p9999_us),
            duration_text(r.max_us),
            r.error_pct,
            r.status_429_pct,
            r.status_503_pct,
            optional(r.cpu_us_per_request, |v| format!("{v:.2}")),
            optional(r.dollars_per_100m, |v| format!("${v:.4}")),
            r.rss_bytes.map_or("–".to_string(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64)),
        );
    }
    out
}

/// A two-panel SVG: offered and achieved requests/s on top, p50, p99 and
/// max latency (log scale) below, one point per second.
pub fn svg(title: &str, series: &[Second]) -> String {
    const WIDTH: f64 = 900.0;
    const PANEL: f64 = 220.0;
    const LEFT: f64 = 80.0;
    const TOP: f64 = 40.0;
    const GAP: f64 = 50.0;
    let n = series.len().max(2) as f64;
    let x = |i: usize| LEFT + (WIDTH - LEFT - 20.0) * i as f64 / (n - 1.0);
    let rate_max = series.iter().map(|s| s.offered.max(s.responses)).max().unwrap_or(1).max(1) as f64;
    let rate_y = |v: u64| TOP + PANEL - PANEL * v as f64 / rate_max;
    let latency_max = series.iter().map(|s| s.max_us).max().unwrap_or(10).max(10) as f64;
    let (log_low, log_high) = (1.0f64, latency_max.log10().ceil().max(2.0));
    let latency_top = TOP + PANEL + GAP;
    let latency_y = |us: u64| {
        let v = (us.max(10) as f64).log10().clamp(log_low, log_high);
        latency_top + PANEL - PANEL * (v - log_low) / (log_high - log_low)
    };
    let line = |points: Vec<(f64, f64)>, color: &str| {
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n", path.join(" "))
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"20\" font-size=\"15\">{}</text>\n",
        latency_top + PANEL + 40.0,
        escape(title)
    );
    for (panel_top, label) in [(TOP, "requests/s"), (latency_top, "latency (log)")] {
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{panel_top}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\
             <text x=\"5\" y=\"{}\">{label}</text>",
            WIDTH - LEFT - 20.0,
            panel_top + PANEL / 2.0
        );
    }
    let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{rate_max:.0}</text>", LEFT - 5.0, TOP + 10.0);
    for decade in (log_low as u32)..=(log_high as u32) {
        let us = 10u64.pow(decade);
        let y = latency_y(us);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - 20.0,
            LEFT - 5.0,
            y + 4.0,
            duration_text(us)
        );
    }
    out += &line(series.iter().enumerate().map(|(i, s)| (x(i), rate_y(s.offered))).collect(), "#999");
    out += &line(series.iter().enumerate().map(|(i, s)| (x(i), rate_y(s.responses))).collect(), "#2a7");
    let answered = |s: &&Second| s.responses > 0;
    for (pick, color) in [(0usize, "#36c"), (1, "#e80"), (2, "#c22")] {
        let points = series
            .iter()
            .enumerate()
            .filter(|(_, s)| answered(s))
            .map(|(i, s)| (x(i), latency_y([s.p50_us, s.p99_us, s.max_us][pick])))
            .collect();
        out += &line(points, color);
    }
    legend(&mut out, LEFT, WIDTH, latency_top + PANEL, series.len());
    out.push_str("</svg>\n");
    out
}

/// The legend under the latency panel and the run's length, in seconds.
fn legend(out: &mut String, left: f64, width: f64, bottom: f64, seconds: usize) {
    let legend = [("#999", "offered/s"), ("#2a7", "answered/s"), ("#36c", "p50"), ("#e80", "p99"), ("#c22", "max")];
    for (i, (color, name)) in legend.iter().enumerate() {
        let lx = left + 10.0 + 120.0 * i as f64;
        let ly = bottom + 30.0;
        let _ = writeln!(out, "<rect x=\"{lx}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{ly}\">{name}</text>", ly - 5.0, lx + 20.0);
    }
    let _ =
        writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{seconds} s</text>", width - 20.0, bottom + 15.0);
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;

    use super::*;
    use crate::conn::Stats;

    fn phase() -> PhaseResult {
        let mut stats = Stats::new();
        for i in 0..1000u64 {
            let status = match i % 100 {
                0 => 503,
                1 => 429,
                2 => 404,
                _ => 200,
            };
            stats.record(status, Duration::from_micros(100 + i));
        }
        stats.failures = 10;
        PhaseResult {
            issued: 1010,
            stats,
            elapsed: Duration::from_secs(2),
            series: vec![
                Second {
                    offered: 505,
                    responses: 500,
                    errors: 10,
                    p50_us: 500,
                    p99_us: 1000,
                    max_us: 1099,
                    classes: [0; 5]
                };
                2
            ],
            lag_us: Histogram::new_with_bounds(1, 60_000_000, 2).unwrap(),
            server_cpu: Some(Duration::from_millis(5)),
            server_rss_peak: Some(64 << 20),
            classes: Vec::new(),
        }
    }

    #[test]
    fn row_counts_and_cost() {
        let row = Row::new("steady", "shardgate", &phase(), Some(505.0), 0.036);
        assert_eq!((row.issued, row.responses, row.failures), (1010, 1000, 10));
        assert_eq!(row.throughput_rps, 500.0);
        // 10 failures + 10 503s; the 404s and 429s are not errors.
        assert!((row.error_pct - 100.0 * 20.0 / 1010.0).abs() < 1e-9);
        assert!((row.status_429_pct - 100.0 * 10.0 / 1010.0).abs() < 1e-9);
        assert_eq!(row.cpu_us_per_request, Some(5.0));
        // 5 µs × 1e8 = 500 CPU-s = 0.139 h at $0.036 = $0.005.
        assert!((row.dollars_per_100m.unwrap() - 0.005).abs() < 1e-9);
        assert_eq!(row.max_us, row.p9999_us.max(row.max_us));
    }

    #[test]
    fn markdown_has_the_seed_columns() {
        let table = markdown(&[Row::new("steady", "shardgate", &phase(), Some(505.0), 0.036)]);
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        for column in
            ["p50", "p99", "p99.9", "max", "throughput", "error %", "429 %", "503 %", "CPU µs/req", "$ per 100M", "RSS"]
        {
            assert!(header.contains(column), "{column}");
        }
        let row = lines.nth(1).unwrap();
        assert!(row.starts_with("| steady | shardgate | 505 | 500 | "), "{row}");
        assert!(row.contains("| 1.98 | 0.99 | 0.99 | 5.00 | $0.0050 | 64 MiB |"), "{row}");
        assert_eq!(duration_text(250), "250 µs");
        assert_eq!(duration_text(12_345), "12.3 ms");
        assert_eq!(duration_text(2_500_000), "2.50 s");
    }

    #[test]
    fn svg_draws_every_series() {
        let picture = svg("burst <8x>", &phase().series);
        assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
        assert_eq!(picture.matches("<polyline").count(), 5);
        assert!(picture.contains("burst &lt;8x&gt;"));
    }
}
