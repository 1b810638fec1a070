//! The cross-core hop: CPU per request when every GET is served by the core
//! that received it, versus when every GET is forwarded to another core.
//!
//! Connections are opened first and each one's receiving core is found from
//! the server's per-core request counters (one `/healthz` per connection,
//! with a scrape before and after). Then the same connections alternate
//! between rounds of GETs for keys their own core owns ("local") and keys
//! another core owns ("remote"), and the server's CPU time per response is
//! compared within each round.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shardgate_shards::route::shard_for_key;

use crate::conn::{Conn, Stats};
use crate::procfs;

pub struct HopArgs {
    pub addr: SocketAddr,
    pub server_pid: u32,
    pub shards: u32,
    pub connections: usize,
    pub depth: usize,
    pub rounds: usize,
    pub seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Local,
    Remote,
}

struct Round {
    mode: Mode,
    rps: f64,
    cpu_us: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

pub async fn run(args: HopArgs) -> Result<String> {
    let mut conns = Vec::new();
    let mut cores = Vec::new();
    for _ in 0..args.connections {
        let mut conn = Conn::connect(args.addr).await?;
        cores.push(receiving_core(args.addr, &mut conn, args.shards).await?);
        conns.push(conn);
    }
    for shard in 0..args.shards {
        if !cores.contains(&shard) {
            bail!("no connection landed on core {shard}; use more connections");
        }
    }
    let keys: Vec<String> = (0..args.shards).map(|s| key_owned_by(s, args.shards)).collect();
    let mut setup = Conn::connect(args.addr).await?;
    for key in &keys {
        let value = "v".repeat(64);
        let put = format!("PUT /v1/kv/{key} HTTP/1.1\r\nHost: bench\r\nContent-Length: 64\r\n\r\n{value}");
        let (status, _) = setup.request(put.as_bytes()).await?;
        if !(200..300).contains(&status) {
            bail!("preloading {key} answered {status}");
        }
    }
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        for mode in [Mode::Local, Mode::Remote] {
            let requests: Vec<Vec<u8>> = cores
                .iter()
                .map(|&core| {
                    let owner = match mode {
                        Mode::Local => core,
                        Mode::Remote => (core + 1) % args.shards,
                    };
                    format!("GET /v1/kv/{} HTTP/1.1\r\nHost: bench\r\n\r\n", keys[owner as usize]).into_bytes()
                })
                .collect();
            let result = measure(&args, &mut conns, requests, mode).await?;
            eprintln!(
                "round {} {:?}: {:.0} req/s, {:.3} µs CPU/request, p50 {} µs, p99 {} µs, errors {}",
                round + 1,
                mode,
                result.rps,
                result.cpu_us,
                result.p50_us,
                result.p99_us,
                result.errors
            );
            rounds.push(result);
        }
    }
    Ok(report(&args, &rounds))
}

async fn measure(args: &HopArgs, conns: &mut Vec<Conn>, requests: Vec<Vec<u8>>, mode: Mode) -> Result<Round> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = procfs::cpu_time(args.server_pid)?;
    let started = Instant::now();
    let depth = args.depth;
    let handles: Vec<_> = conns
        .drain(..)
        .zip(requests)
        .map(|(mut conn, request)| {
            monoio::spawn(async move {
                let stats = conn.closed_loop(&request, depth, until).await;
                (conn, stats)
            })
        })
        .collect();
    let mut total = Stats::new();
    for handle in handles {
        let (conn, stats) = handle.await;
        total.merge(&stats);
        conns.push(conn);
    }
    let elapsed = started.elapsed();
    let cpu = procfs::cpu_time(args.server_pid)? - cpu_before;
    if total.responses == 0 {
        bail!("no responses");
    }
    Ok(Round {
        mode,
        rps: total.responses as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / total.responses as f64,
        p50_us: total.latency_us.value_at_quantile(0.5),
        p99_us: total.latency_us.value_at_quantile(0.99),
        errors: total.errors(),
    })
}

/// Finds the core that accepted `conn`: the one whose `/healthz` counter
/// moved while `conn` made one request.
async fn receiving_core(addr: SocketAddr, conn: &mut Conn, shards: u32) -> Result<u32> {
    let before = healthz_counts(&scrape(addr).await?, shards);
    let (status, _) = conn.request(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
    if status != 200 {
        bail!("/healthz answered {status}");
    }
    let after = healthz_counts(&scrape(addr).await?, shards);
    let moved: Vec<u32> = (0..shards).filter(|&s| after[s as usize] > before[s as usize]).collect();
    match moved.as_slice() {
        [core] => Ok(*core),
        _ => bail!("could not tell which core served the connection (counters moved on {moved:?})"),
    }
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut conn = Conn::connect(addr).await?;
    let (status, body) = conn.request(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    String::from_utf8(body).context("metrics are not UTF-8")
}

/// `shardgate_requests_total{shard="i",route="healthz",...}` summed per shard.
fn healthz_counts(metrics: &str, shards: u32) -> Vec<f64> {
    let mut counts = vec![0.0; shards as usize];
    for line in
        metrics.lines().filter(|l| l.starts_with("shardgate_requests_total{") && l.contains("route=\"healthz\""))
    {
        let shard =
            line.split("shard=\"").nth(1).and_then(|rest| rest.split('"').next()).and_then(|s| s.parse::<usize>().ok());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(shard), Some(value)) = (shard, value) {
            if shard < counts.len() {
                counts[shard] += value;
            }
        }
    }
    counts
}

fn key_owned_by(owner: u32, shards: u32) -> String {
    (0..).map(|i| format!("hop-{i}")).find(|k| shard_for_key(k.as_bytes(), shards) == owner).expect("some key")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(args: &HopArgs, rounds: &[Round]) -> String {
    let pick = |mode: Mode| rounds.iter().filter(move |r| r.mode == mode);
    let row = |mode: Mode, name: &str| {
        let rps = median(pick(mode).map(|r| r.rps).collect());
        let cpu = median(pick(mode).map(|r| r.cpu_us).collect());
        let p50 = median(pick(mode).map(|r| r.p50_us as f64).collect());
        let p99 = median(pick(mode).map(|r| r.p99_us as f64).collect());
        let errors: u64 = pick(mode).map(|r| r.errors).sum();
        format!("| {name} | {rps:.0} | {cpu:.2} | {p50:.0} µs | {p99:.0} µs | {errors} |")
    };
    let ratios: Vec<f64> = rounds.chunks(2).map(|pair| pair[1].cpu_us / pair[0].cpu_us).collect();
    format!(
        "`--shards {}`, {} connections, pipeline depth {}, {} rounds × {} s, medians; ratio = remote / local CPU per request within each round.\n\n\
         | keys | requests/s | CPU µs/request | p50 | p99 | errors |\n|---|---|---|---|---|---|\n{}\n{}\n\n\
         Extra CPU per request for a cross-core hop: **{:+.0}%** (paired median; rounds: {}).\n",
        args.shards,
        args.connections,
        args.depth,
        args.rounds,
        args.seconds,
        row(Mode::Local, "owned by the receiving core"),
        row(Mode::Remote, "owned by another core"),
        (median(ratios.clone()) - 1.0) * 100.0,
        ratios.iter().map(|r| format!("{:+.0}%", (r - 1.0) * 100.0)).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_counts_sum_statuses_per_shard() {
        let metrics = "# TYPE shardgate_requests_total counter\n\
            shardgate_requests_total{shard=\"0\",route=\"healthz\",status=\"200\"} 3\n\
            shardgate_requests_total{shard=\"1\",route=\"healthz\",status=\"200\"} 5\n\
            shardgate_requests_total{shard=\"1\",route=\"kv\",status=\"200\"} 99\n\
            shardgate_requests_total{shard=\"1\",route=\"healthz\",status=\"405\"} 1\n";
        assert_eq!(healthz_counts(metrics, 2), vec![3.0, 6.0]);
    }
}
