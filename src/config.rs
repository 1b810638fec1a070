//! Flags, environment and config file, validated into one plain [`Config`].
//!
//! Precedence: a flag beats its `SHARDGATE_*` environment variable, which
//! beats the `--config` TOML file, which beats the embedded default. Every
//! value is checked here; a bad one ends the process with exit code 2 and
//! one line naming the flag.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
pub use shardgate_io::config::Durability;
use shardgate_io::config::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, CacheConfig, ClusterConfig, DriverChoice, GatewayConfig,
    HealthConfig, OriginAddress, OriginLimit, OverloadConfig, Secret,
};
use shardgate_io::runtime::metrics::ORIGINS_MAX;
use shardgate_shards::ratelimit::{Policy, WINDOW_MS_MAX};

/// Flags as typed. Values stay strings so that flags, environment and file
/// go through the same parsers and the same error messages.
#[derive(Parser, Debug, Default)]
#[command(
    name = "shardgate",
    version,
    about = "Thread-per-core, shared-nothing HTTP/1.1 key-value API server",
    after_help = "Subcommand:\n  shardgate check [FLAGS]   inspect this host for the given flags (io_uring, memlock, nofile, \
                  somaxconn, governor, THP, CPUs, fdatasync of --data-dir); prints PASS/WARN/FAIL lines, exits 1 on FAIL"
)]
pub struct Cli {
    /// Address every core listens on (SO_REUSEPORT) [default: 127.0.0.1:8080]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_LISTEN")]
    listen: Option<String>,
    /// Shards: one event loop, pinned thread and state shard each [default: CPUs in the affinity mask]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_SHARDS")]
    shards: Option<String>,
    /// Directory of the per-shard log segments [default: ./data]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_DATA_DIR")]
    data_dir: Option<String>,
    /// async | sync [default: async]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_DURABILITY")]
    durability: Option<String>,
    /// Longest time an acknowledged async write stays only in memory [default: 5ms]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_FLUSH_INTERVAL")]
    flush_interval: Option<String>,
    /// Log segments roll at this size [default: 64MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_SEGMENT_BYTES")]
    segment_bytes: Option<String>,
    /// Appended but not yet durable log bytes per shard; past it writes get 503 [default: 64MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_LOG_BACKLOG_BYTES")]
    log_backlog_bytes: Option<String>,
    /// Longest a sync write or a read of an evicted value waits for the disk; past it, new ones get 503 [default: 1s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_DISK_QUEUE_TIMEOUT")]
    disk_queue_timeout: Option<String>,
    /// Memory budget for stored values across all shards [default: 1GiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CACHE_BYTES")]
    cache_bytes: Option<String>,
    /// Per-client limit on all requests, N/DURATION or off [default: 1000/1s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_RATE_LIMIT")]
    rate_limit: Option<String>,
    /// Per-client limit on unsafe methods (PUT, DELETE…), N/DURATION or off [default: off]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_RATE_LIMIT_WRITES")]
    rate_limit_writes: Option<String>,
    /// Memory for rate-limit windows across all shards; idle clients are evicted first [default: 64MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_RATE_LIMIT_STATE_BYTES")]
    rate_limit_state_bytes: Option<String>,
    /// Trust the client's forwarding fields (behind your own balancer): rate-limit identity from the last X-Forwarded-For hop; in gateway mode X-Forwarded-* and Forwarded pass to the origin [default: false]
    // No `allow_hyphen_values` here: the value is optional, and a following
    // `--flag` must stay a flag.
    #[arg(long, env = "SHARDGATE_TRUST_FORWARDED_FOR", num_args = 0..=1, default_missing_value = "true")]
    trust_forwarded_for: Option<String>,
    /// auto | uring | epoll [default: auto]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_IO_DRIVER")]
    io_driver: Option<String>,
    /// Open connections per shard; more are refused with 503 [default: 10000]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_MAX_CONNECTIONS")]
    max_connections: Option<String>,
    /// Largest request body; larger → 413 [default: 1MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_MAX_BODY")]
    max_body: Option<String>,
    /// Largest request header section; larger → 431 [default: 16KiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_MAX_HEADER")]
    max_header: Option<String>,
    /// Time allowed to send a request head; slower → 408 [default: 10s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_HEADER_TIMEOUT")]
    header_timeout: Option<String>,
    /// Idle keep-alive connections close after this [default: 60s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_IDLE_TIMEOUT")]
    idle_timeout: Option<String>,
    /// Longest pause while a request body arrives; longer → 408 [default: 60s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_BODY_TIMEOUT")]
    body_timeout: Option<String>,
    /// Longest time a client may accept no byte of a response; then it is closed [default: 60s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_SEND_TIMEOUT")]
    send_timeout: Option<String>,
    /// Listen backlog of each core's socket [default: 4096]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_BACKLOG")]
    backlog: Option<String>,
    /// Log lines as key=value text or JSON: text | json [default: text]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Gateway mode: an http://HOST:PORT origin every non-service path goes to; repeat (or comma-separate)
    /// for several, balanced round-robin with health checks [default: none]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN", value_delimiter = ',')]
    origin: Vec<String>,
    /// Time allowed to connect to an origin; slower → 502 [default: 1s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_CONNECT_TIMEOUT")]
    origin_connect_timeout: Option<String>,
    /// Time allowed for an origin's whole response; slower → 504 [default: 10s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_TIMEOUT")]
    origin_timeout: Option<String>,
    /// Idle keep-alive connections kept per origin per shard [default: 64]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_POOL")]
    origin_pool: Option<String>,
    /// Requests in flight to one origin, all shards together: N, or auto (found from latency, 4 to 512) [default: auto]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_MAX_CONNECTIONS")]
    origin_max_connections: Option<String>,
    /// Requests that may wait for a free origin slot, all shards together; more → 503 [default: 1024]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_QUEUE")]
    origin_queue: Option<String>,
    /// Longest wait for a free origin slot; then a stale copy where allowed, else 503 [default: 1s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_QUEUE_TIMEOUT")]
    origin_queue_timeout: Option<String>,
    /// Retries to an origin (and async-write redeliveries) as a share of its requests over 10 s, e.g. 20% [default: 20%]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_RETRY_BUDGET")]
    retry_budget: Option<String>,
    /// Freshness of cacheable responses that carry none; 0 does not store them [default: 0]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_DEFAULT_TTL")]
    default_ttl: Option<String>,
    /// Open an origin's circuit after N consecutive failures, probe again after DURATION [default: 20/10s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_BREAKER")]
    breaker: Option<String>,
    /// Queue every unsafe request for asynchronous delivery, not only `Prefer: respond-async` [default: false]
    #[arg(long, env = "SHARDGATE_ASYNC_WRITES", num_args = 0..=1, default_missing_value = "true")]
    async_writes: Option<String>,
    /// Bearer token that PURGE requires [default: none: PURGE refused]
    // hide_env_values: `--help` must not print the secret from the environment.
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the bearer token that PURGE requires, so it need not be on the command line [default: none]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// Delivery tries of an asynchronous write before it is marked failed [default: 8]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_WRITE_RETRIES")]
    write_retries: Option<String>,
    /// Queued asynchronous writes per shard; more → 503 [default: 100000]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_WRITE_QUEUE_MAX")]
    write_queue_max: Option<String>,
    /// Largest origin response the gateway stores; larger ones stream through unstored [default: 16MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CACHE_OBJECT_MAX")]
    cache_object_max: Option<String>,
    /// Heuristic freshness (RFC 9111 §4.2.2): this share of the time since Last-Modified, e.g. 10%, or off [default: off]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_HEURISTIC_FRESHNESS")]
    heuristic_freshness: Option<String>,
    /// Add the cache key to Cache-Status (for debugging) [default: false]
    #[arg(long, env = "SHARDGATE_CACHE_STATUS_KEY", num_args = 0..=1, default_missing_value = "true")]
    cache_status_key: Option<String>,
    /// Memory for the surrogate-key (Cache-Tag) index across shards; a response whose tags do not fit is not stored [default: 32MiB]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CACHE_TAG_BYTES")]
    cache_tag_bytes: Option<String>,
    /// HTTP health check: GET this path on each origin, 2xx/3xx is healthy (rise 2, fall 3); without it a TCP connect [default: none]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_HEALTH_PATH")]
    origin_health_path: Option<String>,
    /// Time between two health checks of an origin [default: 1s]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ORIGIN_HEALTH_INTERVAL")]
    origin_health_interval: Option<String>,
    /// Access log: off, - (stdout) or a file path, reopened on SIGHUP [default: off]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ACCESS_LOG")]
    access_log: Option<String>,
    /// Access log lines as text or one JSON object per line: text | json [default: text]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_ACCESS_LOG_FORMAT")]
    access_log_format: Option<String>,
    /// redis://HOST:PORT: rate limits shared by every node [default: none, limits per node]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CLUSTER_REDIS")]
    cluster_redis: Option<String>,
    /// nats://HOST:PORT (JetStream): gateway writes, their statuses and purges shared by every node [default: none]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CLUSTER_NATS")]
    cluster_nats: Option<String>,
    /// This node's name among the others [default: the hostname]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_NODE_ID")]
    node_id: Option<String>,
    /// Nodes behind the router; while Redis is unreachable each enforces limit / N [default: 1]
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CLUSTER_SIZE")]
    cluster_size: Option<String>,
    /// TOML file with the same keys (snake_case)
    #[arg(long, allow_hyphen_values = true, env = "SHARDGATE_CONFIG")]
    config: Option<PathBuf>,
}

/// The config file: the same keys as the flags, snake_case. Numbers may be
/// written bare (`shards = 4`) or as strings (`cache_bytes = "512MiB"`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<toml::Value>,
    shards: Option<toml::Value>,
    data_dir: Option<toml::Value>,
    durability: Option<toml::Value>,
    flush_interval: Option<toml::Value>,
    segment_bytes: Option<toml::Value>,
    log_backlog_bytes: Option<toml::Value>,
    disk_queue_timeout: Option<toml::Value>,
    cache_bytes: Option<toml::Value>,
    /// A limit string, or a table: `limit`, `writes`, `state_bytes` and a
    /// `keys` table of API key → limit.
    rate_limit: Option<toml::Value>,
    rate_limit_writes: Option<toml::Value>,
    rate_limit_state_bytes: Option<toml::Value>,
    trust_forwarded_for: Option<toml::Value>,
    io_driver: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    max_body: Option<toml::Value>,
    max_header: Option<toml::Value>,
    header_timeout: Option<toml::Value>,
    idle_timeout: Option<toml::Value>,
    body_timeout: Option<toml::Value>,
    send_timeout: Option<toml::Value>,
    backlog: Option<toml::Value>,
    log_format: Option<toml::Value>,
    /// A URL or an array of URLs.
    origin: Option<toml::Value>,
    origin_connect_timeout: Option<toml::Value>,
    origin_timeout: Option<toml::Value>,
    origin_pool: Option<toml::Value>,
    origin_max_connections: Option<toml::Value>,
    origin_queue: Option<toml::Value>,
    origin_queue_timeout: Option<toml::Value>,
    retry_budget: Option<toml::Value>,
    default_ttl: Option<toml::Value>,
    breaker: Option<toml::Value>,
    async_writes: Option<toml::Value>,
    admin_token: Option<toml::Value>,
    admin_token_file: Option<toml::Value>,
    write_retries: Option<toml::Value>,
    write_queue_max: Option<toml::Value>,
    cache_object_max: Option<toml::Value>,
    heuristic_freshness: Option<toml::Value>,
    cache_status_key: Option<toml::Value>,
    cache_tag_bytes: Option<toml::Value>,
    origin_health_path: Option<toml::Value>,
    origin_health_interval: Option<toml::Value>,
    access_log: Option<toml::Value>,
    access_log_format: Option<toml::Value>,
    cluster_redis: Option<toml::Value>,
    cluster_nats: Option<toml::Value>,
    node_id: Option<toml::Value>,
    cluster_size: Option<toml::Value>,
}

pub use shardgate_io::runtime::logging::Format as LogFormat;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: one per CPU in the affinity mask.
    pub shards: Option<u32>,
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub flush_interval: Duration,
    pub segment_bytes_max: u64,
    pub log_backlog_bytes_max: u64,
    pub disk_queue_timeout: Duration,
    pub cache_bytes: u64,
    /// None: off.
    pub rate_limit: Option<Policy>,
    pub rate_limit_writes: Option<Policy>,
    /// API key → its limit on all requests (None: unlimited).
    pub rate_limit_keys: HashMap<Vec<u8>, Option<Policy>>,
    pub rate_limit_state_bytes: u64,
    pub trust_forwarded_for: bool,
    pub io_driver: DriverChoice,
    pub connections_max: usize,
    pub body_bytes_max: usize,
    pub header_bytes_max: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub backlog: i32,
    pub log_format: LogFormat,
    pub access_log: AccessLogConfig,
    /// Gateway mode: `Some` when at least one `--origin` is given.
    pub gateway: Option<GatewayConfig>,
    /// `Some` when `--cluster-redis` or `--cluster-nats` is given.
    pub cluster: Option<ClusterConfig>,
}

/// A message for the operator and the exit code to leave with.
#[derive(Debug)]
pub struct Exit {
    pub message: String,
    pub code: u8,
}

const SHARDS_MAX: u32 = 1024;

/// Parses `args` (the program name first) and the environment into a [`Config`].
pub fn load(args: Vec<std::ffi::OsString>) -> Result<Config, Exit> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error)
            if matches!(error.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) =>
        {
            return Err(Exit { message: error.to_string().trim_end().to_string(), code: 0 });
        }
        Err(error) => {
            // clap's message spans several lines; keep the first, which names the flag.
            let rendered = error.to_string();
            let first = rendered.lines().next().unwrap_or("error: invalid arguments");
            return Err(Exit { message: format!("shardgate: {}", first.trim_start_matches("error: ")), code: 2 });
        }
    };
    let file = match &cli.config {
        None => File::default(),
        Some(path) => read_file(path).map_err(|message| Exit { message, code: 2 })?,
    };
    resolve(cli, file).map_err(|message| Exit { message, code: 2 })
}

fn read_file(path: &PathBuf) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("shardgate: cannot read --config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let reason = e.message().to_string();
        format!("shardgate: invalid --config {}: {reason}", path.display())
    })
}

/// One setting's raw value and where it came from, for error messages.
struct Raw {
    value: String,
    source: &'static str,
}

fn pick(flag: Option<String>, file: Option<toml::Value>) -> Result<Option<Raw>, String> {
    if let Some(value) = flag {
        return Ok(Some(Raw { value, source: "" }));
    }
    match file {
        None => Ok(None),
        Some(toml::Value::String(value)) => Ok(Some(Raw { value, source: " (config file)" })),
        Some(toml::Value::Integer(n)) => Ok(Some(Raw { value: n.to_string(), source: " (config file)" })),
        Some(other) => Ok(Some(Raw { value: other.to_string(), source: " (config file)" })),
    }
}

/// Applies `parse` to the chosen value of `flag`, or returns `default`.
fn setting<T>(
    flag: &str,
    cli: Option<String>,
    file: Option<toml::Value>,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    match pick(cli, file)? {
        None => Ok(default),
        Some(raw) => parse(raw.value.trim())
            .map_err(|why| format!("shardgate: invalid --{flag}{} '{}': {why}", raw.source, raw.value)),
    }
}

/// Splits a `[rate_limit]` table into the settings it holds.
struct RateFile {
    limit: Option<toml::Value>,
    writes: Option<toml::Value>,
    state_bytes: Option<toml::Value>,
    keys: HashMap<Vec<u8>, Option<Policy>>,
}

fn rate_file(file: &mut File) -> Result<RateFile, String> {
    let mut rate = RateFile {
        limit: None,
        writes: file.rate_limit_writes.take(),
        state_bytes: file.rate_limit_state_bytes.take(),
        keys: HashMap::new(),
    };
    let table = match file.rate_limit.take() {
        Some(toml::Value::Table(table)) => table,
        other => {
            rate.limit = other;
            return Ok(rate);
        }
    };
    let bad = |why: String| format!("shardgate: invalid --config [rate_limit]: {why}");
    for (name, value) in table {
        match name.as_str() {
            "limit" => rate.limit = Some(value),
            "writes" => rate.writes = rate.writes.take().or(Some(value)),
            "state_bytes" => rate.state_bytes = rate.state_bytes.take().or(Some(value)),
            "keys" => {
                let toml::Value::Table(keys) = value else {
                    return Err(bad("keys must be a table of API key = \"N/DURATION\" or \"off\"".to_string()));
                };
                for (key, limit) in keys {
                    let text = limit.as_str().ok_or_else(|| bad(format!("keys.{key} must be a string")))?;
                    let policy = parse_rate_limit(text).map_err(|why| bad(format!("keys.{key} '{text}': {why}")))?;
                    rate.keys.insert(key.into_bytes(), policy);
                }
            }
            other => return Err(bad(format!("unknown key '{other}' (expected limit, writes, state_bytes, keys)"))),
        }
    }
    Ok(rate)
}

fn resolve(mut cli: Cli, mut file: File) -> Result<Config, String> {
    let rate = rate_file(&mut file)?;
    let gateway = gateway(&mut cli, &mut file)?;
    let log = log_settings(&mut cli, &mut file)?;
    let connection = connection_settings(&mut cli, &mut file)?;
    let cluster = cluster_settings(&mut cli, &mut file, gateway.is_some())?;
    let access_log = access_log_settings(&mut cli, &mut file)?;
    Ok(Config {
        listen: setting("listen", cli.listen, file.listen, "127.0.0.1:8080".parse().expect("valid"), parse_address)?,
        shards: setting("shards", cli.shards, file.shards, None, |v| {
            parse_count(v, 1, u64::from(SHARDS_MAX)).map(|n| Some(n as u32))
        })?,
        data_dir: log.data_dir,
        durability: log.durability,
        flush_interval: log.flush_interval,
        segment_bytes_max: log.segment_bytes_max,
        log_backlog_bytes_max: log.log_backlog_bytes_max,
        disk_queue_timeout: log.disk_queue_timeout,
        cache_bytes: setting("cache-bytes", cli.cache_bytes, file.cache_bytes, 1 << 30, |v| {
            parse_size(v).and_then(|n| within(n, 64 * 1024, u64::MAX / 2))
        })?,
        rate_limit: setting("rate-limit", cli.rate_limit, rate.limit, Policy::new(1000, 1000), parse_rate_limit)?,
        rate_limit_writes: setting("rate-limit-writes", cli.rate_limit_writes, rate.writes, None, parse_rate_limit)?,
        rate_limit_keys: rate.keys,
        rate_limit_state_bytes: setting(
            "rate-limit-state-bytes",
            cli.rate_limit_state_bytes,
            rate.state_bytes,
            64 << 20,
            |v| parse_size(v).and_then(|n| within(n, 64 << 10, 1 << 40)),
        )?,
        trust_forwarded_for: setting(
            "trust-forwarded-for",
            cli.trust_forwarded_for,
            file.trust_forwarded_for,
            false,
            parse_bool,
        )?,
        io_driver: setting("io-driver", cli.io_driver, file.io_driver, DriverChoice::Auto, |v| match v {
            "auto" => Ok(DriverChoice::Auto),
            "uring" => Ok(DriverChoice::Uring),
            "epoll" => Ok(DriverChoice::Epoll),
            _ => Err("expected auto, uring or epoll".to_string()),
        })?,
        connections_max: connection.connections_max,
        body_bytes_max: connection.body_bytes_max,
        header_bytes_max: connection.header_bytes_max,
        header_timeout: connection.header_timeout,
        idle_timeout: connection.idle_timeout,
        body_timeout: connection.body_timeout,
        send_timeout: connection.send_timeout,
        backlog: connection.backlog,
        log_format: setting("log-format", cli.log_format, file.log_format, LogFormat::Text, parse_format)?,
        access_log,
        gateway,
        cluster,
    })
}

/// `--access-log` and `--access-log-format`.
fn access_log_settings(cli: &mut Cli, file: &mut File) -> Result<AccessLogConfig, String> {
    Ok(AccessLogConfig {
        target: setting(
            "access-log",
            cli.access_log.take(),
            file.access_log.take(),
            AccessLogTarget::Off,
            |v| match v {
                "off" => Ok(AccessLogTarget::Off),
                "-" => Ok(AccessLogTarget::Stdout),
                "" => Err("expected off, - or a file path".to_string()),
                path => Ok(AccessLogTarget::File(PathBuf::from(path))),
            },
        )?,
        format: setting(
            "access-log-format",
            cli.access_log_format.take(),
            file.access_log_format.take(),
            AccessLogFormat::Text,
            |v| match v {
                "text" => Ok(AccessLogFormat::Text),
                "json" => Ok(AccessLogFormat::Json),
                _ => Err("expected text or json".to_string()),
            },
        )?,
    })
}

/// The cluster flags (docs/spec.md §8); None when neither service is named.
fn cluster_settings(cli: &mut Cli, file: &mut File, gateway: bool) -> Result<Option<ClusterConfig>, String> {
    let redis = setting("cluster-redis", cli.cluster_redis.take(), file.cluster_redis.take(), None, |v| {
        parse_service_url(v, "redis").map(Some)
    })?;
    let nats = setting("cluster-nats", cli.cluster_nats.take(), file.cluster_nats.take(), None, |v| {
        parse_service_url(v, "nats").map(Some)
    })?;
    let node_id = setting("node-id", cli.node_id.take(), file.node_id.take(), None, |v| {
        let valid = (1..=64).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        valid.then(|| Some(v.to_string())).ok_or_else(|| "expected 1 to 64 of A-Z a-z 0-9 - _ .".to_string())
    })?;
    let size = setting("cluster-size", cli.cluster_size.take(), file.cluster_size.take(), 1, |v| {
        parse_count(v, 1, 1024).map(|n| n as u32)
    })?;
    if nats.is_some() && !gateway {
        return Err("shardgate: --cluster-nats carries gateway writes and purges: it needs --origin".to_string());
    }
    if redis.is_none() && nats.is_none() {
        return Ok(None);
    }
    let node_id = node_id.unwrap_or_else(hostname);
    Ok(Some(ClusterConfig { redis, nats, node_id, size }))
}

/// `SCHEME://HOST:PORT` with a non-empty host and a port.
fn parse_service_url(value: &str, scheme: &str) -> Result<String, String> {
    let expected = || format!("expected {scheme}://HOST:PORT");
    let rest = value.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")).ok_or_else(expected)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(expected)?;
    if host.is_empty() || host.contains(['/', '@', ' ']) || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(expected());
    }
    Ok(value.to_string())
}

/// The machine's hostname, the default `--node-id`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(64).collect();
    if name.is_empty() {
        "shardgate".to_string()
    } else {
        name
    }
}

fn parse_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_string()),
    }
}

/// The durable log's settings.
struct LogSettings {
    data_dir: PathBuf,
    durability: Durability,
    flush_interval: Duration,
    segment_bytes_max: u64,
    log_backlog_bytes_max: u64,
    disk_queue_timeout: Duration,
}

fn log_settings(cli: &mut Cli, file: &mut File) -> Result<LogSettings, String> {
    Ok(LogSettings {
        data_dir: setting("data-dir", cli.data_dir.take(), file.data_dir.take(), PathBuf::from("./data"), |v| {
            if v.is_empty() {
                Err("expected a directory path".to_string())
            } else {
                Ok(PathBuf::from(v))
            }
        })?,
        durability: setting(
            "durability",
            cli.durability.take(),
            file.durability.take(),
            Durability::Async,
            |v| match v {
                "async" => Ok(Durability::Async),
                "sync" => Ok(Durability::Sync),
                _ => Err("expected async or sync".to_string()),
            },
        )?,
        flush_interval: setting(
            "flush-interval",
            cli.flush_interval.take(),
            file.flush_interval.take(),
            Duration::from_millis(5),
            |v| parse_duration(v).and_then(|d| within_duration(d, Duration::from_millis(1), Duration::from_secs(60))),
        )?,
        segment_bytes_max: setting(
            "segment-bytes",
            cli.segment_bytes.take(),
            file.segment_bytes.take(),
            64 << 20,
            |v| parse_size(v).and_then(|n| within(n, 1 << 20, 4 << 30)),
        )?,
        log_backlog_bytes_max: setting(
            "log-backlog-bytes",
            cli.log_backlog_bytes.take(),
            file.log_backlog_bytes.take(),
            64 << 20,
            |v| parse_size(v).and_then(|n| within(n, 64 << 10, 16 << 30)),
        )?,
        disk_queue_timeout: setting(
            "disk-queue-timeout",
            cli.disk_queue_timeout.take(),
            file.disk_queue_timeout.take(),
            Duration::from_secs(1),
            |v| parse_duration(v).and_then(|d| within_duration(d, Duration::from_millis(1), Duration::from_secs(600))),
        )?,
    })
}

/// The limits and timeouts of client connections.
struct ConnectionSettings {
    connections_max: usize,
    body_bytes_max: usize,
    header_bytes_max: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    body_timeout: Duration,
    send_timeout: Duration,
    backlog: i32,
}

fn connection_settings(cli: &mut Cli, file: &mut File) -> Result<ConnectionSettings, String> {
    let timeout = |name, flag: Option<String>, value: Option<toml::Value>, default| {
        setting(name, flag, value, Duration::from_secs(default), parse_timeout)
    };
    Ok(ConnectionSettings {
        connections_max: setting(
            "max-connections",
            cli.max_connections.take(),
            file.max_connections.take(),
            10_000,
            |v| parse_count(v, 1, 1 << 20).map(|n| n as usize),
        )?,
        body_bytes_max: setting("max-body", cli.max_body.take(), file.max_body.take(), 1 << 20, |v| {
            parse_size(v).and_then(|n| within(n, 0, 1 << 30)).map(|n| n as usize)
        })?,
        header_bytes_max: setting("max-header", cli.max_header.take(), file.max_header.take(), 16 * 1024, |v| {
            parse_size(v).and_then(|n| within(n, 1024, 1 << 20)).map(|n| n as usize)
        })?,
        header_timeout: timeout("header-timeout", cli.header_timeout.take(), file.header_timeout.take(), 10)?,
        idle_timeout: timeout("idle-timeout", cli.idle_timeout.take(), file.idle_timeout.take(), 60)?,
        body_timeout: timeout("body-timeout", cli.body_timeout.take(), file.body_timeout.take(), 60)?,
        send_timeout: timeout("send-timeout", cli.send_timeout.take(), file.send_timeout.take(), 60)?,
        backlog: setting("backlog", cli.backlog.take(), file.backlog.take(), 4096, |v| {
            parse_count(v, 1, 1 << 20).map(|n| n as i32)
        })?,
    })
}

/// The `--origin` URLs, from the flags or the file (a string or an array).
fn origins(cli: &mut Cli, file: &mut File) -> Result<Vec<OriginAddress>, String> {
    let mut urls = std::mem::take(&mut cli.origin);
    if urls.is_empty() {
        match file.origin.take() {
            None => {}
            Some(toml::Value::String(url)) => urls.push(url),
            Some(toml::Value::Array(values)) => {
                for value in values {
                    let url =
                        value.as_str().ok_or("shardgate: invalid --origin (config file): expected URL strings")?;
                    urls.push(url.to_string());
                }
            }
            Some(_) => {
                return Err("shardgate: invalid --origin (config file): expected a URL or an array of URLs".into())
            }
        }
    }
    if urls.len() > ORIGINS_MAX {
        return Err(format!("shardgate: invalid --origin: at most {ORIGINS_MAX} origins"));
    }
    urls.iter()
        .map(|url| parse_origin(url.trim()).map_err(|why| format!("shardgate: invalid --origin '{url}': {why}")))
        .collect()
}

/// The gateway settings (docs/spec.md §7), validated even without `--origin` so
/// that a typo is reported whatever the mode. None without an origin.
fn gateway(cli: &mut Cli, file: &mut File) -> Result<Option<GatewayConfig>, String> {
    let origins = origins(cli, file)?;
    let duration_within =
        |min: Duration, max: Duration| move |v: &str| parse_duration(v).and_then(|d| within_duration(d, min, max));
    let (breaker_failures, breaker_open) =
        setting("breaker", cli.breaker.take(), file.breaker.take(), (20, Duration::from_secs(10)), parse_breaker)?;
    let config = GatewayConfig {
        origins,
        connect_timeout: setting(
            "origin-connect-timeout",
            cli.origin_connect_timeout.take(),
            file.origin_connect_timeout.take(),
            Duration::from_secs(1),
            duration_within(Duration::from_millis(1), Duration::from_secs(60)),
        )?,
        timeout: setting(
            "origin-timeout",
            cli.origin_timeout.take(),
            file.origin_timeout.take(),
            Duration::from_secs(10),
            duration_within(Duration::from_millis(1), Duration::from_secs(3600)),
        )?,
        pool_connections_max: setting("origin-pool", cli.origin_pool.take(), file.origin_pool.take(), 64, |v| {
            parse_count(v, 0, 100_000).map(|n| n as usize)
        })?,
        default_ttl: setting("default-ttl", cli.default_ttl.take(), file.default_ttl.take(), Duration::ZERO, |v| {
            if v == "0" {
                return Ok(Duration::ZERO);
            }
            parse_duration(v).and_then(|d| within_duration(d, Duration::ZERO, Duration::from_secs(365 * 86400)))
        })?,
        breaker_failures,
        breaker_open,
        async_writes: setting("async-writes", cli.async_writes.take(), file.async_writes.take(), false, parse_bool)?,
        admin_token: admin_token(cli, file)?,
        write_retries: setting("write-retries", cli.write_retries.take(), file.write_retries.take(), 8, |v| {
            parse_count(v, 1, 100).map(|n| n as u32)
        })?,
        write_queue_entries_max: setting(
            "write-queue-max",
            cli.write_queue_max.take(),
            file.write_queue_max.take(),
            100_000,
            |v| parse_count(v, 1, 10_000_000).map(|n| n as usize),
        )?,
        overload: overload_settings(cli, file)?,
        cache: cache_settings(cli, file)?,
        health: HealthConfig {
            path: setting(
                "origin-health-path",
                cli.origin_health_path.take(),
                file.origin_health_path.take(),
                None,
                |v| match v.starts_with('/') && v.bytes().all(|b| b.is_ascii_graphic()) {
                    true => Ok(Some(v.to_string())),
                    false => Err("expected a path starting with / (no spaces)".to_string()),
                },
            )?,
            interval: setting(
                "origin-health-interval",
                cli.origin_health_interval.take(),
                file.origin_health_interval.take(),
                Duration::from_secs(1),
                duration_within(Duration::from_millis(10), Duration::from_secs(3600)),
            )?,
        },
    };
    Ok((!config.origins.is_empty()).then_some(config))
}

/// What the gateway stores, and what it says about it.
fn cache_settings(cli: &mut Cli, file: &mut File) -> Result<CacheConfig, String> {
    Ok(CacheConfig {
        object_bytes_max: setting(
            "cache-object-max",
            cli.cache_object_max.take(),
            file.cache_object_max.take(),
            16 << 20,
            |v| parse_size(v).and_then(|n| within(n, 0, 1 << 40)),
        )?,
        heuristic_percent: setting(
            "heuristic-freshness",
            cli.heuristic_freshness.take(),
            file.heuristic_freshness.take(),
            0,
            |v| match v {
                "off" => Ok(0),
                _ => parse_count(v.strip_suffix('%').ok_or("expected a percentage such as 10%, or off")?, 1, 100)
                    .map(|n| n as u32),
            },
        )?,
        status_key: setting(
            "cache-status-key",
            cli.cache_status_key.take(),
            file.cache_status_key.take(),
            false,
            parse_bool,
        )?,
        tag_bytes_max: setting(
            "cache-tag-bytes",
            cli.cache_tag_bytes.take(),
            file.cache_tag_bytes.take(),
            32 << 20,
            |v| parse_size(v).and_then(|n| within(n, 0, 1 << 40)),
        )?,
    })
}

/// The origin's concurrency limit, its queue and the retry budget.
fn overload_settings(cli: &mut Cli, file: &mut File) -> Result<OverloadConfig, String> {
    Ok(OverloadConfig {
        origin_limit: setting(
            "origin-max-connections",
            cli.origin_max_connections.take(),
            file.origin_max_connections.take(),
            OriginLimit::Auto,
            |v| match v {
                "auto" => Ok(OriginLimit::Auto),
                _ => parse_count(v, 1, 100_000).map(|n| OriginLimit::Fixed(n as u32)),
            },
        )?,
        queue_entries_max: setting("origin-queue", cli.origin_queue.take(), file.origin_queue.take(), 1024, |v| {
            parse_count(v, 0, 1_000_000).map(|n| n as usize)
        })?,
        queue_timeout: setting(
            "origin-queue-timeout",
            cli.origin_queue_timeout.take(),
            file.origin_queue_timeout.take(),
            Duration::from_secs(1),
            |v| parse_duration(v).and_then(|d| within_duration(d, Duration::from_millis(1), Duration::from_secs(60))),
        )?,
        retry_budget_percent: setting("retry-budget", cli.retry_budget.take(), file.retry_budget.take(), 20, |v| {
            parse_count(v.strip_suffix('%').unwrap_or(v), 0, 100).map(|n| n as u32)
        })?,
    })
}

/// `--admin-token`, or the token in `--admin-token-file`. A secret: no
/// message ever repeats it, whatever is wrong with it.
fn admin_token(cli: &mut Cli, file: &mut File) -> Result<Option<Secret>, String> {
    let inline = pick(cli.admin_token.take(), file.admin_token.take())?;
    let path = pick(cli.admin_token_file.take(), file.admin_token_file.take())?;
    let (text, flag, source) = match (inline, path) {
        (Some(_), Some(_)) => return Err("shardgate: give --admin-token or --admin-token-file, not both".into()),
        (None, None) => return Ok(None),
        (Some(raw), None) => (raw.value, "admin-token", raw.source),
        (None, Some(raw)) => {
            let text = std::fs::read_to_string(raw.value.trim()).map_err(|error| {
                format!("shardgate: invalid --admin-token-file{} '{}': {error}", raw.source, raw.value.trim())
            })?;
            (text, "admin-token-file", raw.source)
        }
    };
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        let why = "expected a non-empty token of visible ASCII characters (value not shown)";
        return Err(format!("shardgate: invalid --{flag}{source}: {why}"));
    }
    Ok(Some(Secret::new(token.to_string())))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// `http://HOST[:PORT]` (no path), resolved once at start.
fn parse_origin(url: &str) -> Result<OriginAddress, String> {
    let Some(authority) = url.strip_prefix("http://") else {
        return Err("expected http://HOST:PORT (https origins are not supported)".to_string());
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err("expected http://HOST:PORT with no path or credentials".to_string());
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    use std::net::ToSocketAddrs as _;
    let address = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolves to no address"))?;
    Ok(OriginAddress { url: url.to_string(), address })
}

/// `N/DURATION`: failures in a row, then how long the circuit stays open.
fn parse_breaker(value: &str) -> Result<(u32, Duration), String> {
    let (count, duration) = value.split_once('/').ok_or("expected N/DURATION, such as 20/10s")?;
    let count = parse_count(count.trim(), 1, 1_000_000)? as u32;
    let duration = parse_duration(duration.trim())
        .and_then(|d| within_duration(d, Duration::from_millis(1), Duration::from_secs(3600)))?;
    Ok((count, duration))
}

fn parse_address(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| "expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080".to_string())
}

fn parse_count(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = value.parse().map_err(|_| "expected a whole number".to_string())?;
    within(n, min, max)
}

fn within(n: u64, min: u64, max: u64) -> Result<u64, String> {
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(n)
}

fn within_duration(d: Duration, min: Duration, max: Duration) -> Result<Duration, String> {
    if d < min || d > max {
        return Err(format!("must be between {min:?} and {max:?}"));
    }
    Ok(d)
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    parse_duration(value).and_then(|d| within_duration(d, Duration::from_secs(1), Duration::from_secs(24 * 3600)))
}

/// Parses `123`, `64KiB`, `512MiB`, `1GiB`, `2TiB` (powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err("expected a size such as 65536, 64KiB, 512MiB or 1GiB".to_string()),
    };
    let n: u64 = number.parse().map_err(|_| "expected a size such as 65536, 64KiB, 512MiB or 1GiB".to_string())?;
    n.checked_mul(scale).ok_or_else(|| "size overflows".to_string())
}

/// Parses `250ms`, `10s`, `5m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| "expected a duration such as 250ms, 10s or 5m".to_string())?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(|| "duration overflows".to_string()),
        _ => Err("expected a duration such as 250ms, 10s or 5m".to_string()),
    }
}

/// Parses `N/DURATION` (`1000/1s`, `100/10s`, `5/1m`) or `off`.
fn parse_rate_limit(value: &str) -> Result<Option<Policy>, String> {
    if value == "off" {
        return Ok(None);
    }
    let expected = || "expected N/DURATION such as 1000/1s, or off".to_string();
    let (requests, window) = value.split_once('/').ok_or_else(expected)?;
    let requests = requests.parse::<u32>().map_err(|_| expected())?;
    let window = parse_duration(window).map_err(|_| expected())?;
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    match Policy::new(requests, window_ms) {
        Some(policy) => Ok(Some(policy)),
        None => Err(format!("N must be 1 to {} and DURATION 1ms to {}m", u32::MAX, WINDOW_MS_MAX / 60_000)),
    }
}

#[cfg(test)]
mod tests;
