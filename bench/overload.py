#!/usr/bin/env python3
"""Backpressure scenarios (issue 14): shardgate (`--origin-max-connections
auto`, and a fixed 16), nginx (`proxy_cache` + `proxy_cache_lock` +
upstream `max_conns=16`) and Varnish (backend `.max_connections = 16`),
one server core each, in front of the same simulated origin, which serves
16 requests at once in 20 ms (capacity C = 800/s) and queues the rest.

  origin-normal    12,000/s: 400 misses/s (C/2) among hits of 1,000 cached paths
  origin-overload  12,000/s: 2,400 misses/s (3C) among the same hits
                   (after a 10 s warm-up at this rate from a fresh start,
                   the two alternate in 5 rounds of 10 s against the same
                   server, and the hit p99 ratio is taken within a round)
  origin-brownout   4,000/s: 400 misses/s; the hot paths expire every 2 s
                    (stale-if-error=60); the origin's latency is 500 ms from
                    10 s to 30 s, 20 ms before and after
  disk-normal / disk-overload (shardgate only: the others keep no data):
                    8,000 GET hits/s alone, then mixed with sync PUTs
                    offered at 3x the group-commit capacity measured first
                    with a closed loop, alternating in 5 rounds of 6 s; the
                    server's writes throttled to 256 KiB/s by a blkio
                    cgroup (needs root)

Each second the origin's peak concurrency and queue are sampled (every
100 ms, /_origin/stats) along with shardgate's current limit, and the
generator counts answers by X-Cache class (hit, miss, stale, rejected).
Servers run on CPU 0, generator and origin on CPU 1. Writes Markdown to
--out (default bench/results/DATE-backpressure.md) and the raw JSON next
to it.

Usage: python3 bench/overload.py [--servers shardgate,shardgate-16,nginx,varnish]
                                 [--scenarios overload,brownout,disk] [--out FILE]
                                 [--merge EARLIER.json]
Needs: nginx and varnish (apt-get install nginx-light varnish), a release build.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk"))
import compare  # noqa: E402  (free_port, wait_port, start_shardgate)

ROOT = compare.ROOT
BENCH = os.path.join(ROOT, "target", "release", "shardgate-bench")
SERVER_CPU, CLIENT_CPU = 0, 1
CAPACITY = 16  # the origin's concurrent requests
ORIGIN_MS = 20
HOT = 1000
CGROUP = "/sys/fs/cgroup/blkio/shardgate-bench"
# The data disk's write rate for the server, low enough that 3x its sync-PUT
# capacity plus the GETs stay within what one generator core can offer.
THROTTLE_BYTES_PER_S = 256 * 1024

NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=c:64m max_size=1g inactive=1h use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin} max_conns={capacity}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache c;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1s;
            proxy_cache_revalidate on;
            proxy_cache_background_update on;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""

VCL = """vcl 4.1;
backend default {{
    .host = "127.0.0.1"; .port = "{origin}";
    .max_connections = {capacity};
    .connect_timeout = 1s; .first_byte_timeout = 10s;
}}
sub vcl_backend_response {{ set beresp.grace = 60s; }}
sub vcl_deliver {{
    if (obj.hits > 0) {{
        if (obj.ttl < 0s) {{ set resp.http.X-Cache = "STALE"; }} else {{ set resp.http.X-Cache = "HIT"; }}
    }} else {{ set resp.http.X-Cache = "MISS"; }}
}}
"""


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def start_origin(cache_control):
    port = compare.free_port()
    proc = subprocess.Popen(["taskset", "-c", str(CLIENT_CPU), BENCH, "origin", "--listen", f"127.0.0.1:{port}",
                             "--cache-control", cache_control, "--latency", f"{ORIGIN_MS}ms", "--body-bytes", "256",
                             "--max-concurrency", str(CAPACITY)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_port(port)
    return proc, port


def start_server(name, origin_port, work):
    """Returns (processes, pids for CPU accounting, address)."""
    if name.startswith("shardgate") or name == "baseline":
        extra = ["--origin", f"http://127.0.0.1:{origin_port}"]
        if name == "shardgate-16":
            extra += ["--origin-max-connections", str(CAPACITY)]
        binary = BASELINE if name == "baseline" else compare.BIN
        proc, base = compare.start_shardgate(SERVER_CPU, "uring", extra=extra, binary=binary)
        return [proc], [proc.pid], base.removeprefix("http://")
    port = compare.free_port()
    if name == "nginx":
        conf = os.path.join(work, "nginx.conf")
        open(conf, "w").write(NGINX_CONF.format(dir=work, origin=origin_port, capacity=CAPACITY, port=port))
        proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), "nginx", "-c", conf, "-p", work],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        vcl = os.path.join(work, "bench.vcl")
        open(vcl, "w").write(VCL.format(origin=origin_port, capacity=CAPACITY))
        # -j none: no privilege drop, so the temporary directory stays private.
        proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), "varnishd", "-j", "none", "-n", os.path.join(work, "varnish"),
                                 "-a", f"127.0.0.1:{port}", "-f", vcl, "-s", "malloc,512m", "-p", "thread_pools=1",
                                 "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_port(port)
    time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    # nginx's worker does the work, so do Varnish's children; count them
    # all but nginx's cache loader, which exits a minute after the start
    # (its CPU could not be read after that; it only scans an empty cache).
    children = [int(pid) for pid in children if "cache loader" not in open(f"/proc/{pid}/cmdline").read()]
    return [proc], [proc.pid, *children], f"127.0.0.1:{port}"


def is_shardgate(server):
    return server.startswith("shardgate") or server == "baseline"


stop = compare.stop


def preload(addr, paths):
    """Fetches each path once so it is stored. Eight at a time, half the
    origin's capacity: Varnish answers 503 at once when its backend is at
    `.max_connections` (a connection it is closing still counts), so a
    refused path is fetched again."""
    def fetch(path):
        for attempt in range(20):
            try:
                return get(f"http://{addr}{path}", timeout=30)
            except urllib.error.HTTPError as error:
                if error.code != 503 or attempt == 19:
                    raise
                time.sleep(0.05)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, paths))


class Sampler(threading.Thread):
    """Every 100 ms: the origin's stats (peaks reset per read) and, for
    shardgate, its origin limit; summed per second."""

    def __init__(self, origin_port, server_addr, shardgate):
        super().__init__(daemon=True)
        self.origin, self.server, self.shardgate = origin_port, server_addr, shardgate
        self.samples, self.running = [], True

    def run(self):
        started = time.time()
        while self.running:
            stats = json.loads(get(f"http://127.0.0.1:{self.origin}/_origin/stats"))
            limit = None
            if self.shardgate and int((time.time() - started) * 10) % 5 == 0:
                metrics = get(f"http://{self.server}/metrics").decode()
                limit = next((float(l.split()[-1]) for l in metrics.splitlines()
                              if l.startswith("shardgate_origin_limit{")), None)
            self.samples.append((time.time() - started, stats, limit))
            time.sleep(0.1)

    def seconds(self):
        """Per second: peak in flight and queued, requests the origin
        answered (from the first sample of one second to the next's), and
        shardgate's limit."""
        out = {}
        for at, stats, limit in self.samples:
            second = out.setdefault(int(at), {"in_flight_max": 0, "queued_max": 0, "requests": stats["requests"],
                                              "limit": None})
            second["in_flight_max"] = max(second["in_flight_max"], stats["in_flight_max"])
            second["queued_max"] = max(second["queued_max"], stats["queued_max"])
            second["requests_end"] = stats["requests"]
            if limit is not None:
                second["limit"] = limit
        seconds = [out[k] for k in sorted(out)]
        for this, following in zip(seconds, seconds[1:]):
            this["requests_end"] = following["requests"]
        return seconds[:-1] if len(seconds) > 1 else seconds


def scenario_file(work, name, rate, miss_fraction, duration, read_fraction=1.0, api="gateway", mode="open",
                  connections=2048):
    path = os.path.join(work, f"{name}.toml")
    rate_line = f"rate = {rate}\n" if mode == "open" else ""
    open(path, "w").write(f"""name = "{name}"
description = "{rate}/s {mode} loop"
mode = "{mode}"
duration = "{duration}s"
connections = {connections}
{rate_line}timeout = "10s"

[workload]
keys = {HOT}
read_fraction = {read_fraction}
miss_fraction = {miss_fraction}
value_bytes = 64
api_keys = 64
preload = {HOT if api != "gateway" else 0}
""")
    return path


RUNS = iter(range(1, 1 << 30))
BASELINE = None


def run_bench(path, addr, pids, label, out_dir, api="gateway", no_preload=True):
    """Runs one scenario file; returns the JSON the generator wrote. Each
    run gets its own seed, so its misses are keys no earlier run named."""
    command = ["taskset", "-c", str(CLIENT_CPU), BENCH, "run", path, "--addr", addr, "--api", api,
               "--server-name", label, "--server-pid", ",".join(map(str, pids)), "--out-dir", out_dir,
               "--seed", str(next(RUNS))]
    if no_preload:
        command.append("--no-preload")
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    name = os.path.basename(path).removesuffix(".toml")
    return json.load(open(os.path.join(out_dir, f"{name}-{label}.json")))


OVERLOAD_ROUNDS = int(os.environ.get("OVERLOAD_ROUNDS", "5"))
OVERLOAD_ROUND_S = 10


def sampled(origin_port, addr, server, path, pids, out_dir, timers=()):
    """One scenario run with the origin sampled meanwhile."""
    sampler = Sampler(origin_port, addr, is_shardgate(server))
    sampler.start()
    for timer in timers:
        timer.start()
    result = run_bench(path, addr, pids, server, out_dir)
    sampler.running = False
    sampler.join()
    return {"bench": result, "origin": sampler.seconds()}


def rejected_by_reason(server, addr):
    reasons = {}
    if is_shardgate(server):
        for line in get(f"http://{addr}/metrics").decode().splitlines():
            if line.startswith("shardgate_origin_rejected_total{"):
                reason = line.split('reason="')[1].split('"')[0]
                reasons[reason] = reasons.get(reason, 0) + float(line.split()[-1])
    return reasons


def overload_rounds(server, out_dir, work):
    """origin-normal and origin-overload against one server and origin,
    alternating in OVERLOAD_ROUNDS rounds after a warm-up at the overload's
    rate from a fresh start (its per-second figures are kept: how long an
    adaptive limit takes to settle), so the host's drift moves both alike
    and the hit p99 ratio is taken within each round. Each run's misses are
    keys no earlier run named."""
    origin, origin_port = start_origin("max-age=3600")
    procs, pids, addr = start_server(server, origin_port, os.path.join(work, f"{server}-overload"))
    try:
        preload(addr, [f"/item/key-{i}" for i in range(HOT)])
        warm = Sampler(origin_port, addr, is_shardgate(server))
        warm.start()
        run_bench(scenario_file(work, "warmup", 12000, 2400 / 12000, 10), addr, pids, server, out_dir)
        warm.running = False
        warm.join()
        normal = scenario_file(work, "origin-normal", 12000, 400 / 12000, OVERLOAD_ROUND_S)
        over = scenario_file(work, "origin-overload", 12000, 2400 / 12000, OVERLOAD_ROUND_S)
        rounds = []
        for _ in range(OVERLOAD_ROUNDS):
            rounds.append({"origin-normal": sampled(origin_port, addr, server, normal, pids, out_dir),
                           "origin-overload": sampled(origin_port, addr, server, over, pids, out_dir)})
        last = rounds[-1]
        return {"origin-normal": last["origin-normal"],
                "origin-overload": {**last["origin-overload"], "warmup_origin": warm.seconds(),
                                    "rejected": rejected_by_reason(server, addr)},
                "rounds": rounds}
    finally:
        stop(procs)
        stop([origin])


def brownout_run(server, out_dir, work):
    """origin-brownout: the hot paths expire every 2 s (stale-if-error=60);
    the origin's latency is 500 ms from 10 s to 30 s of the run."""
    origin, origin_port = start_origin("max-age=2, stale-if-error=60")
    procs, pids, addr = start_server(server, origin_port, os.path.join(work, f"{server}-brownout"))
    try:
        preload(addr, [f"/item/key-{i}" for i in range(HOT)])
        run_bench(scenario_file(work, "warmup", 4000, 400 / 4000, 10), addr, pids, server, out_dir)
        time.sleep(3)  # The hot paths expire (max-age=2): the run begins with revalidations.
        timers = [threading.Timer(at + 0.05, get, [f"http://127.0.0.1:{origin_port}/_origin/latency?ms={ms}"])
                  for at, ms in [(10, 500), (30, ORIGIN_MS)]]
        path = scenario_file(work, "origin-brownout", 4000, 400 / 4000, 40)
        run = sampled(origin_port, addr, server, path, pids, out_dir, timers)
        return {**run, "rejected": rejected_by_reason(server, addr)}
    finally:
        stop(procs)
        stop([origin])


DISK_ROUNDS = 5
DISK_ROUND_S = 6
DISK_GETS_PER_S = 8000
DISK_CONNECTIONS = 4096  # PUTs offered at 3x wait up to ~0.6 s each: ~2,200 connections busy


def disk_runs(out_dir, work, servers):
    """Closed-loop sync PUT capacity with the servers' writes throttled
    (THROTTLE_BYTES_PER_S), counting accepted writes only; then rounds that
    alternate GETs of cached keys alone and the same GETs mixed with PUTs
    offered at 3x that capacity (one generator, same connections, so the
    two differ only in the PUTs; the host's noise moves both alike). With a
    baseline build both servers run side by side (the idle one costs
    nothing), take turns round by round, and get the same offered load:
    3x the capacity measured on the first."""
    os.makedirs(CGROUP, exist_ok=True)
    open(f"{CGROUP}/blkio.throttle.write_bps_device", "w").write(f"{disk_device()} {THROTTLE_BYTES_PER_S}")
    started = {}
    results = {}
    try:
        for name in servers:
            binary = BASELINE if name == "baseline" else compare.BIN
            proc, base = compare.start_shardgate(SERVER_CPU, "uring", extra=["--durability", "sync"], binary=binary)
            started[name] = (proc, base)
            for task in os.listdir(f"/proc/{proc.pid}/task"):
                open(f"{CGROUP}/tasks", "w").write(task)
            capacity_path = scenario_file(work, "disk-capacity", 0, 0.0, 10, read_fraction=0.0, api="shardgate",
                                          mode="closed", connections=256)
            capacity = run_bench(capacity_path, base.removeprefix("http://"), [proc.pid], name, out_dir,
                                 api="shardgate", no_preload=False)
            row = capacity["rows"][0]
            results[name] = {"capacity": capacity, "rounds": [],
                             "put_rate": int(row["throughput_rps"] * (1 - row["status_503_pct"] / 100))}
        put_rate = results[servers[0]]["put_rate"]
        rate = DISK_GETS_PER_S + 3 * put_rate
        gets = scenario_file(work, "disk-hits", DISK_GETS_PER_S, 0.0, DISK_ROUND_S, api="shardgate",
                             connections=DISK_CONNECTIONS)
        mixed = scenario_file(work, "disk-mixed", rate, 0.0, DISK_ROUND_S, read_fraction=DISK_GETS_PER_S / rate,
                              api="shardgate", connections=DISK_CONNECTIONS)
        for round_number in range(DISK_ROUNDS):
            for name in servers if round_number % 2 == 0 else list(reversed(servers)):
                proc, base = started[name]
                addr = base.removeprefix("http://")
                alone = run_bench(gets, addr, [proc.pid], f"{name}-alone", out_dir, api="shardgate")
                loaded = run_bench(mixed, addr, [proc.pid], name, out_dir, api="shardgate")
                results[name]["rounds"].append({"disk-normal": alone, "disk-overload": loaded})
        for name, (_, base) in started.items():
            metrics = get(f"{base}/metrics").decode()
            results[name]["offered_put_rate"] = put_rate
            results[name]["disk_rejected"] = {
                l.split("reason=\"")[1].split("\"")[0]: float(l.split()[-1])
                for l in metrics.splitlines() if l.startswith("shardgate_disk_rejected_total{")}
    finally:
        stop([proc for proc, _ in started.values()])
    return results


def disk_device():
    """MAJ:MIN of the block device under the data directory's file system."""
    dev = os.stat(tempfile.gettempdir()).st_dev
    major, minor = os.major(dev), os.minor(dev)
    if os.path.exists(f"/sys/dev/block/{major}:{minor}/partition"):
        parent = os.path.realpath(f"/sys/dev/block/{major}:{minor}/..")
        major, minor = open(os.path.join(parent, "dev")).read().strip().split(":")
    return f"{major}:{minor}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="shardgate,shardgate-16,nginx,varnish")
    parser.add_argument("--scenarios", default="overload,brownout,disk")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      f"{datetime.date.today()}-backpressure.md"))
    parser.add_argument("--baseline", help="another shardgate binary, run as the server named `baseline` "
                        "(--origin-max-connections auto), e.g. the previous build")
    parser.add_argument("--merge", help="results JSON of an earlier run: rerun only what is asked, keep the rest")
    args = parser.parse_args()
    servers, scenarios = args.servers.split(","), args.scenarios.split(",")
    global BASELINE
    BASELINE = args.baseline
    if args.baseline and "baseline" not in servers:
        servers.insert(1, "baseline")
    work = tempfile.mkdtemp(prefix="shardgate-overload-")
    # Saved after each server, so a failure late in a long run keeps the rest (--merge).
    save = lambda raw: json.dump(raw, open(args.out.removesuffix(".md") + ".json", "w"), indent=1)
    out_dir = os.path.join(work, "json")
    raw = json.load(open(args.merge)) if args.merge else {}
    for server in servers if "overload" in scenarios else []:  # servers alternate
        print(f"== overload: {server}", file=sys.stderr)
        os.makedirs(os.path.join(work, f"{server}-overload"), exist_ok=True)
        runs = overload_rounds(server, out_dir, work)
        raw[f"origin-normal/{server}"] = runs["origin-normal"]
        raw[f"origin-overload/{server}"] = {**runs["origin-overload"], "rounds": runs["rounds"]}
        save(raw)
    for server in servers if "brownout" in scenarios else []:
        print(f"== brownout: {server}", file=sys.stderr)
        os.makedirs(os.path.join(work, f"{server}-brownout"), exist_ok=True)
        raw[f"origin-brownout/{server}"] = brownout_run(server, out_dir, work)
        save(raw)
    if "disk" in scenarios:
        disk_servers = ["shardgate", "baseline"] if BASELINE else ["shardgate"]
        print(f"== disk: {', '.join(disk_servers)}", file=sys.stderr)
        for name, result in disk_runs(out_dir, work, disk_servers).items():
            raw["disk" if name == "shardgate" else f"disk/{name}"] = result
    save(raw)
    import overload_report  # noqa: E402
    open(args.out, "w").write(overload_report.markdown(raw))
    print(open(args.out).read())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
