use super::*;

fn resolve_args(args: &[&str], file: &str) -> Result<Config, String> {
    let cli =
        Cli::try_parse_from(std::iter::once("shardgate").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    let file: File = toml::from_str(file).map_err(|e| e.to_string())?;
    resolve(cli, file)
}

#[test]
fn defaults() {
    let config = resolve_args(&[], "").unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.shards, None);
    assert_eq!(config.cache_bytes, 1 << 30);
    assert_eq!(config.body_bytes_max, 1 << 20);
    assert_eq!(config.header_bytes_max, 16 * 1024);
    assert_eq!(config.connections_max, 10_000);
    assert_eq!(config.flush_interval, Duration::from_millis(5));
    assert_eq!(config.durability, Durability::Async);
    assert_eq!(config.io_driver, DriverChoice::Auto);
    assert_eq!(config.rate_limit, Policy::new(1000, 1000));
    assert_eq!(config.rate_limit_writes, None);
    assert!(!config.trust_forwarded_for);
    assert_eq!(config.header_timeout, Duration::from_secs(10));
    assert_eq!(config.idle_timeout, Duration::from_secs(60));
}

#[test]
fn flags_beat_the_file() {
    let file = "shards = 3\ncache_bytes = \"2GiB\"\nlisten = \"127.0.0.1:9000\"\nrate_limit = \"off\"";
    let config = resolve_args(&["--shards", "2"], file).unwrap();
    assert_eq!(config.shards, Some(2));
    assert_eq!(config.cache_bytes, 2 << 30);
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.rate_limit, None);
}

#[test]
fn bad_values_name_their_flag() {
    let cases = [
        (vec!["--shards", "0"], "invalid --shards '0'"),
        (vec!["--cache-bytes", "lots"], "invalid --cache-bytes 'lots'"),
        (vec!["--max-body", "1PiB"], "invalid --max-body '1PiB'"),
        (vec!["--io-driver", "kqueue"], "invalid --io-driver 'kqueue'"),
        (vec!["--flush-interval", "5"], "invalid --flush-interval '5'"),
        (vec!["--rate-limit", "10/0s"], "invalid --rate-limit '10/0s'"),
        (vec!["--rate-limit", "0/1s"], "invalid --rate-limit '0/1s'"),
        (vec!["--rate-limit", "5000000000/1s"], "invalid --rate-limit '5000000000/1s'"),
        (vec!["--rate-limit", "10/2000m"], "invalid --rate-limit '10/2000m'"),
        (vec!["--rate-limit-writes", "ten"], "invalid --rate-limit-writes 'ten'"),
        (vec!["--rate-limit-state-bytes", "1KiB"], "invalid --rate-limit-state-bytes '1KiB'"),
        (vec!["--trust-forwarded-for", "maybe"], "invalid --trust-forwarded-for 'maybe'"),
        (vec!["--listen", "localhost"], "invalid --listen 'localhost'"),
        (vec!["--durability", "maybe"], "invalid --durability 'maybe'"),
    ];
    for (args, expect) in cases {
        let error = resolve_args(&args, "").unwrap_err();
        assert!(error.contains(expect), "{args:?}: {error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
    let error = resolve_args(&[], "max_header = \"12\"").unwrap_err();
    assert!(error.contains("invalid --max-header (config file) '12'"), "{error}");
}

#[test]
fn unknown_file_keys_are_refused() {
    assert!(toml::from_str::<File>("shard = 2").is_err());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert!(parse_size("1GB").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("99999999999TiB").is_err());
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert!(parse_duration("1h").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn rate_limit_policies_and_the_file_table() {
    let config =
        resolve_args(&["--rate-limit", "100/10s", "--rate-limit-writes", "5/1m", "--trust-forwarded-for"], "").unwrap();
    assert_eq!(config.rate_limit, Policy::new(100, 10_000));
    assert_eq!(config.rate_limit_writes, Policy::new(5, 60_000));
    assert!(config.trust_forwarded_for);
    assert_eq!(config.rate_limit_state_bytes, 64 << 20);
    // The optional value does not swallow the next flag.
    let config = resolve_args(&["--trust-forwarded-for", "--shards", "2"], "").unwrap();
    assert!(config.trust_forwarded_for);
    assert_eq!(config.shards, Some(2));
    let config = resolve_args(&["--trust-forwarded-for", "false"], "").unwrap();
    assert!(!config.trust_forwarded_for);

    let file = "[rate_limit]\nlimit = \"50/1s\"\nwrites = \"off\"\nstate_bytes = \"1MiB\"\n\
                [rate_limit.keys]\nvip = \"off\"\npartner = \"5000/1s\"\n";
    let config = resolve_args(&[], file).unwrap();
    assert_eq!(config.rate_limit, Policy::new(50, 1000));
    assert_eq!(config.rate_limit_writes, None);
    assert_eq!(config.rate_limit_state_bytes, 1 << 20);
    assert_eq!(config.rate_limit_keys.get(&b"vip"[..]), Some(&None));
    assert_eq!(config.rate_limit_keys.get(&b"partner"[..]), Some(&Policy::new(5000, 1000)));
    // A flag still beats the table.
    let config = resolve_args(&["--rate-limit", "off"], file).unwrap();
    assert_eq!(config.rate_limit, None);

    for (bad, expect) in [
        ("[rate_limit]\nburst = 3", "unknown key 'burst'"),
        ("[rate_limit.keys]\nk = 5", "keys.k must be a string"),
        ("[rate_limit.keys]\nk = \"fast\"", "keys.k 'fast'"),
        ("[rate_limit]\nkeys = 3", "keys must be a table"),
    ] {
        let error = resolve_args(&[], bad).unwrap_err();
        assert!(error.contains(expect), "{bad}: {error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
}

const DEPLOYED: &str = include_str!("../../deploy/shardgate.toml");

#[test]
fn the_deploy_file_holds_the_defaults() {
    let deployed = resolve_args(&[], DEPLOYED).unwrap();
    let defaults = resolve_args(&[], "").unwrap();
    assert_eq!(deployed.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(deployed.data_dir, PathBuf::from("/var/lib/shardgate"));
    let normalized = Config { listen: defaults.listen, data_dir: defaults.data_dir.clone(), ..deployed };
    assert_eq!(format!("{normalized:?}"), format!("{defaults:?}"));
}

#[test]
fn the_deploy_file_names_every_flag() {
    use clap::CommandFactory;
    for argument in Cli::command().get_arguments() {
        let key = argument.get_id().as_str();
        let key = match key {
            "config" => continue,
            "rate_limit" => "limit",
            "rate_limit_writes" => "writes",
            "rate_limit_state_bytes" => "state_bytes",
            key => key,
        };
        let present = DEPLOYED.contains(&format!("\n{key} =")) || DEPLOYED.contains(&format!("\n# {key} ="));
        assert!(present, "deploy/shardgate.toml lacks {key}");
    }
}

#[test]
fn gateway_flags_and_their_errors() {
    assert!(resolve_args(&[], "").unwrap().gateway.is_none(), "no origin: no gateway");
    let args = [
        "--origin",
        "http://127.0.0.1:9001",
        "--origin",
        "http://localhost:9002/",
        "--origin-connect-timeout",
        "250ms",
        "--origin-timeout",
        "3s",
        "--origin-pool",
        "8",
        "--default-ttl",
        "30s",
        "--breaker",
        "5/2s",
        "--async-writes",
        "--admin-token",
        "t0k",
        "--write-retries",
        "3",
        "--write-queue-max",
        "10",
    ];
    let gateway = resolve_args(&args, "").unwrap().gateway.expect("gateway mode");
    assert_eq!(gateway.origins.len(), 2);
    assert_eq!(gateway.origins[0].address, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(gateway.origins[1].address.port(), 9002);
    assert_eq!((gateway.connect_timeout, gateway.timeout), (Duration::from_millis(250), Duration::from_secs(3)));
    assert_eq!((gateway.pool_connections_max, gateway.default_ttl), (8, Duration::from_secs(30)));
    assert_eq!((gateway.breaker_failures, gateway.breaker_open), (5, Duration::from_secs(2)));
    assert!(gateway.async_writes);
    assert_eq!(gateway.admin_token.as_ref().map(|t| t.expose()), Some("t0k"));
    assert_eq!((gateway.write_retries, gateway.write_queue_entries_max), (3, 10));
    // Defaults (docs/spec.md §7), and the file's array form.
    let gateway = resolve_args(&[], "origin = [\"http://127.0.0.1:1\"]").unwrap().gateway.unwrap();
    assert_eq!(
        (gateway.connect_timeout, gateway.timeout, gateway.pool_connections_max),
        (Duration::from_secs(1), Duration::from_secs(10), 64)
    );
    assert_eq!(
        (gateway.default_ttl, gateway.breaker_failures, gateway.breaker_open),
        (Duration::ZERO, 20, Duration::from_secs(10))
    );
    assert_eq!((gateway.async_writes, gateway.write_retries, gateway.write_queue_entries_max), (false, 8, 100_000));
    assert_eq!(gateway.admin_token, None);

    for (bad, expect) in [
        (&["--origin", "https://127.0.0.1:1"][..], "https origins are not supported"),
        (&["--origin", "http://127.0.0.1:1/api"], "no path"),
        (&["--origin", "127.0.0.1:1"], "expected http://HOST:PORT"),
        (&["--breaker", "5"], "expected N/DURATION"),
        (&["--breaker", "0/1s"], "invalid --breaker"),
        (&["--write-retries", "0"], "invalid --write-retries"),
        (&["--origin-timeout", "forever"], "invalid --origin-timeout"),
        (&["--admin-token", ""], "invalid --admin-token"),
        (&["--async-writes", "maybe"], "invalid --async-writes"),
    ] {
        let error = resolve_args(bad, "").unwrap_err();
        assert!(error.contains(expect), "{bad:?}: {error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
}

#[test]
fn the_admin_token_comes_from_a_file_and_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cret-from-file\n").unwrap();
    let path = path.to_str().unwrap();
    let config = resolve_args(&["--origin", "http://127.0.0.1:1", "--admin-token-file", path], "").unwrap();
    let token = config.gateway.as_ref().and_then(|g| g.admin_token.as_ref()).map(|t| t.expose().to_string());
    assert_eq!(token.as_deref(), Some("s3cret-from-file"), "the trailing newline is not part of it");
    assert!(!format!("{config:?}").contains("s3cret"), "Debug never shows the token");
    for (bad, expect) in [
        (&["--admin-token", "bad token"][..], "invalid --admin-token"),
        (&["--admin-token", "x", "--admin-token-file", path], "not both"),
        (&["--admin-token-file", "/nonexistent/token"], "invalid --admin-token-file"),
    ] {
        let error = resolve_args(bad, "").unwrap_err();
        assert!(error.contains(expect), "{bad:?}: {error}");
        assert!(!error.contains("bad token") && !error.contains("s3cret"), "the value is echoed: {error}");
    }
    std::fs::write(dir.path().join("blank"), "\n").unwrap();
    let blank = dir.path().join("blank");
    let error = resolve_args(&["--admin-token-file", blank.to_str().unwrap()], "").unwrap_err();
    assert!(error.contains("invalid --admin-token-file") && error.contains("value not shown"), "{error}");
}

#[test]
fn cluster_flags_and_their_errors() {
    assert!(resolve_args(&[], "").unwrap().cluster.is_none(), "no service: no cluster");
    let origin = ["--origin", "http://127.0.0.1:9001"];
    let args = [
        &origin[..],
        &["--cluster-redis", "redis://10.0.0.5:6379", "--cluster-nats", "nats://nats.local:4222"],
        &["--node-id", "edge-1.b", "--cluster-size", "3"],
    ]
    .concat();
    let cluster = resolve_args(&args, "").unwrap().cluster.expect("a cluster");
    assert_eq!(cluster.redis.as_deref(), Some("redis://10.0.0.5:6379"));
    assert_eq!(cluster.nats.as_deref(), Some("nats://nats.local:4222"));
    assert_eq!((cluster.node_id.as_str(), cluster.size), ("edge-1.b", 3));
    // Redis alone works in key-value mode too; the node id defaults to the hostname.
    let file = "cluster_redis = \"redis://127.0.0.1:6390\"\ncluster_size = 2";
    let cluster = resolve_args(&[], file).unwrap().cluster.expect("a cluster");
    assert!(cluster.nats.is_none() && cluster.size == 2 && !cluster.node_id.is_empty());
    let cases: [(&[&str], &str); 9] = [
        (&["--cluster-redis", "127.0.0.1:6379"], "invalid --cluster-redis '127.0.0.1:6379'"),
        (&["--cluster-redis", "redis://:6379"], "invalid --cluster-redis"),
        (&["--cluster-redis", "redis://host:0"], "invalid --cluster-redis"),
        (&["--cluster-redis", "redis://host"], "invalid --cluster-redis"),
        (&["--cluster-redis", "nats://host:1"], "invalid --cluster-redis"),
        (
            &["--cluster-nats", "nats://host:4222"],
            "--cluster-nats carries gateway writes and purges: it needs --origin",
        ),
        (&["--cluster-redis", "redis://h:1", "--node-id", "a b"], "invalid --node-id 'a b'"),
        (&["--cluster-redis", "redis://h:1", "--cluster-size", "0"], "invalid --cluster-size '0'"),
        (&["--cluster-redis", "redis://h:1", "--cluster-size", "1025"], "invalid --cluster-size '1025'"),
    ];
    for (bad, expected) in cases {
        let error = resolve_args(bad, "").unwrap_err();
        assert!(error.contains(expected), "{bad:?}: {error}");
    }
}
