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
    assert_eq!(config.max_body, 1 << 20);
    assert_eq!(config.max_header, 16 * 1024);
    assert_eq!(config.max_connections, 10_000);
    assert_eq!(config.flush_interval, Duration::from_millis(5));
    assert_eq!(config.durability, Durability::Async);
    assert_eq!(config.io_driver, DriverChoice::Auto);
    assert_eq!(config.rate_limit, RateLimit::PerWindow { requests: 1000, window: Duration::from_secs(1) });
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
    assert_eq!(config.rate_limit, RateLimit::Off);
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
