//! `shardgate-bench`: the command line over the `shardgate_bench` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shardgate_bench::execute::run_scenario;
use shardgate_bench::report::{self, CORE_HOUR_PRICE_DEFAULT};
use shardgate_bench::runner::{Options, Target};
use shardgate_bench::scenario::Scenario;
use shardgate_bench::workload::Api;
use shardgate_bench::{hop, origin};

#[derive(Parser)]
#[command(name = "shardgate-bench", version, about = "Load generator and benchmarks for shardgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ApiArg {
    Shardgate,
    Webdis,
    Static,
    Gateway,
}

/// `run`: scenario files against a server.
#[derive(Args)]
struct RunArgs {
    /// Scenario files (bench/scenarios/*.toml).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    #[arg(long)]
    addr: SocketAddr,
    /// The HTTP API the server speaks.
    #[arg(long, value_enum, default_value = "shardgate")]
    api: ApiArg,
    /// Name of the server in the report.
    #[arg(long, default_value = "shardgate")]
    server_name: String,
    /// PIDs of the server's processes (comma-separated), for CPU per request and RSS.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Generator threads, each with its own event loop.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin generator threads to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Price of one vCPU-hour in dollars, for $ per 100M requests.
    #[arg(long, default_value_t = CORE_HOUR_PRICE_DEFAULT)]
    core_hour_price: f64,
    /// Writes <scenario>-<server>.json and .svg here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Skip the scenarios' preload phase (data already there).
    #[arg(long)]
    no_preload: bool,
    /// Overrides the scenarios' connection count.
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenario files against a server and reports them.
    Run(RunArgs),
    /// Runs the simulated origin API (for gateway scenarios) until killed.
    Origin {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Delay before each answer, e.g. 50ms.
        #[arg(long, default_value = "0ms")]
        latency: String,
        /// Fraction of requests answered 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value = "max-age=1")]
        cache_control: String,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// Requests served at once; more wait in the origin's queue (a database pool). 0: no limit.
        #[arg(long, default_value_t = 0)]
        max_concurrency: usize,
        /// A header field added to every GET answer, `Name: value`; `{path}` in the value is the request's
        /// path (e.g. `Surrogate-Key: users {path}`). Repeat for several.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// The rate limiter's error against an exact sliding log on a generated trace.
    RatelimitAccuracy {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Window in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        window_ms: u64,
        /// Trace length in windows.
        #[arg(long, default_value_t = 200)]
        windows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Hit ratio of the value cache's S3-FIFO against LRU and CLOCK on Zipf 0.99 traces.
    Eviction {
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 2_000_000)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Prints one Markdown table from the JSON files `run --out-dir` wrote, in the order given.
    Table {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// CPU per request for keys owned by the receiving core versus another core.
    Hop {
        /// Server address (a shardgate started with --shards 2 or more).
        #[arg(long)]
        addr: SocketAddr,
        /// PID of the server, for its CPU time.
        #[arg(long)]
        server_pid: u32,
        /// The server's shard count.
        #[arg(long, default_value_t = 2)]
        shards: u32,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Also write the Markdown report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args)?,
        Command::Origin { listen, latency, error_rate, cache_control, body_bytes, max_concurrency, headers } => {
            let latency = shardgate_bench::scenario::duration(&latency).map_err(anyhow::Error::msg)?;
            let config =
                origin::OriginConfig { latency, error_rate, cache_control, body_bytes, max_concurrency, headers };
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
            runtime.block_on(async {
                let (listener, addr) = origin::bind(listen)?;
                println!("listening on {addr}");
                origin::serve(listener, config).await
            })?;
        }
        Command::RatelimitAccuracy { limit, window_ms, windows, seed } => {
            let policy = shardgate_shards::ratelimit::Policy::new(limit, window_ms)
                .context("--limit must be ≥ 1 and --window-ms from 1 to 86400000")?;
            print!("{}", shardgate_bench::accuracy::report(policy, windows, seed));
        }
        Command::Eviction { keys, requests, seed } => {
            print!("{}", shardgate_bench::eviction::report(keys, requests, seed));
        }
        Command::Table { files } => {
            let mut rows = Vec::new();
            for path in files {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let json: serde_json::Value = serde_json::from_str(&text)?;
                let found: Vec<report::Row> = serde_json::from_value(json["rows"].clone())?;
                rows.extend(found);
            }
            print!("{}", report::markdown(&rows));
        }
        Command::Hop { addr, server_pid, shards, connections, depth, rounds, seconds, out } => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .context("building the load generator's runtime")?;
            let args = hop::HopArgs { addr, server_pid, shards, connections, depth, rounds, seconds };
            let report = runtime.block_on(hop::run(args))?;
            println!("{report}");
            if let Some(path) = out {
                std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Runs every scenario against the server and prints their table.
fn run(args: RunArgs) -> Result<()> {
    let RunArgs {
        scenarios,
        addr,
        api,
        server_name,
        server_pid,
        threads,
        cpus,
        core_hour_price,
        out_dir,
        no_preload,
        connections,
        seed,
    } = args;
    let api = match api {
        ApiArg::Shardgate => Api::Shardgate,
        ApiArg::Webdis => Api::Webdis,
        ApiArg::Static => Api::Static,
        ApiArg::Gateway => Api::Gateway,
    };
    let target = Target { addr, api, server_pids: server_pid };
    let options = Options { threads, cpus, progress: true, seed };
    let mut rows = Vec::new();
    for path in &scenarios {
        let mut scenario = Scenario::load_file(path).map_err(anyhow::Error::msg)?;
        if let Some(connections) = connections {
            scenario.connections = connections;
            scenario.name = format!("{}-c{connections}", scenario.name);
        }
        eprintln!("{}: {}", scenario.name, scenario.description);
        let run = run_scenario(&scenario, &target, &server_name, &options, core_hour_price, !no_preload)?;
        if let Some(rate) = run.max_sustainable_rps {
            eprintln!("{}: highest rate meeting the bound: {rate:.0}/s", scenario.name);
        }
        if let Some(dir) = &out_dir {
            write_outputs(dir, &scenario, &server_name, &run)?;
        }
        rows.extend(run.rows);
    }
    print!("{}", report::markdown(&rows));
    Ok(())
}

fn write_outputs(
    dir: &std::path::Path,
    scenario: &Scenario,
    server: &str,
    run: &shardgate_bench::execute::ScenarioRun,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("{}-{}", scenario.name, server);
    let series: Vec<_> = run
        .phases
        .iter()
        .map(|(label, phase)| serde_json::json!({ "label": label, "seconds": phase.series, "classes": phase.classes }))
        .collect();
    let json = serde_json::json!({
        "scenario": scenario.name,
        "description": scenario.description,
        "server": server,
        "rows": run.rows,
        "max_sustainable_rps": run.max_sustainable_rps,
        "series": series,
    });
    std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?)?;
    if let Some((_, phase)) = run.phases.first().filter(|_| run.phases.len() == 1) {
        let title = format!("{} on {server}: {}", scenario.name, scenario.description);
        std::fs::write(dir.join(format!("{stem}.svg")), report::svg(&title, &phase.series))?;
    }
    Ok(())
}
