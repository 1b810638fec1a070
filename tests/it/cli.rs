//! docs/spec.md §1: flags, environment, config file, start-up lines, errors.

use std::process::{Command, Stdio};

use crate::harness::Server;

fn run_bad(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shardgate")).args(args).stdin(Stdio::null()).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_values_exit_2_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["--shards", "zero"][..], "--shards"),
        (&["--cache-bytes", "1GB"], "--cache-bytes"),
        (&["--io-driver", "kqueue"], "--io-driver"),
        (&["--max-body", "-5"], "--max-body"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let (code, stderr) = run_bad(args);
        assert_eq!(code, Some(2), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn start_up_prints_a_line_per_shard() {
    let server = Server::start(&["--shards", "2", "--io-driver", "epoll"]);
    assert_eq!(server.shard_lines.len(), 2, "{:?}", server.shard_lines);
    for (i, line) in server.shard_lines.iter().enumerate() {
        assert!(line.starts_with(&format!("shard {i}: cpu ")), "{line}");
        assert!(line.ends_with("driver epoll"), "{line}");
    }
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shardgate.toml");
    std::fs::write(&file, "shards = 3\nmax_connections = 50\n").unwrap();
    let path = file.to_str().unwrap();
    let from_file = Server::start(&["--config", path]);
    assert_eq!(from_file.shard_lines.len(), 3);
    let from_env = Server::start_with_env(&["--config", path], &[("SHARDGATE_SHARDS", "2")]);
    assert_eq!(from_env.shard_lines.len(), 2);
    let from_flag = Server::start_with_env(&["--config", path, "--shards", "1"], &[("SHARDGATE_SHARDS", "2")]);
    assert_eq!(from_flag.shard_lines.len(), 1);
    std::fs::write(&file, "shards = 0\n").unwrap();
    let (code, stderr) = run_bad(&["--config", path]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--shards (config file)"), "{stderr}");
}

#[test]
fn a_served_port_is_refused() {
    let first = Server::start(&["--shards", "1"]);
    let port = first.addr.to_string();
    let (code, stderr) = run_bad(&["--listen", &port, "--shards", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
}

/// The flags `--help` lists, from its `  --name` lines.
fn help_flags() -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_shardgate")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    help.lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .map(|rest| format!("--{}", rest.split([' ', '[', '=']).next().unwrap()))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

#[test]
fn the_contract_and_the_readme_document_every_flag() {
    let flags = help_flags();
    assert!(flags.len() > 20, "read the flags from --help: {flags:?}");
    for (name, text) in
        [("docs/spec.md", include_str!("../../docs/spec.md")), ("README.md", include_str!("../../README.md"))]
    {
        for flag in &flags {
            assert!(text.contains(&format!("`{flag}")), "{name} does not document {flag}");
        }
    }
}
