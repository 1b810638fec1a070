#!/usr/bin/env python3
"""Server CPU per request: shardgate GET of a stored 64-byte value and a
gateway cache hit of a 64-byte origin response, versus nginx `return 200`
with a 64-byte body, measured in the same run; optionally against a
baseline build of shardgate (`--baseline PATH`, e.g. the previous commit's
binary) and a Varnish cache hit of the same origin response (`--varnish`)
in the same rounds.

Every server is pinned to SERVER_CPU, wrk to CLIENT_CPU. CPU per request is
the server's utime+stime (from /proc/PID/stat, all threads) over the run,
divided by the requests wrk completed. Servers alternate within each round
and ratios are taken within the round, because this host drifts between
speed phases for minutes at a time (bench/README.md, "How to read the figures").

Usage: python3 bench/wrk/compare.py [--rounds 3] [--duration 10] [--out FILE]
                                    [--baseline PATH] [--driver uring|epoll|both]
                                    [--gateway] [--varnish]
Needs: wrk and nginx (apt-get install wrk nginx-light; varnish for
--varnish), a release build.
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "shardgate")
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")
VALUE = b"0123456789012345678901234567890123456789012345678901234567890123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_us(pids):
    """utime + stime of one process, or of several together (Varnish's
    manager and its child)."""
    total = 0
    for pid in pids if isinstance(pids, (list, tuple)) else [pids]:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) * TICK_US
    return total


VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%d"; }
"""


def start_varnish(cpu, origin_url):
    """Varnish 7 with its default VCL in front of the origin, one thread
    pool, pinned like the others; returns the process, every PID whose CPU
    counts (manager and child) and its base URL."""
    port = free_port()
    work = tempfile.mkdtemp(prefix="shardgate-bench-varnish-")
    vcl = os.path.join(work, "bench.vcl")
    open(vcl, "w").write(VCL % int(origin_url.rsplit(":", 1)[1]))
    # -j none: no privilege drop, so the temporary directory stays private.
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "varnishd", "-j", "none", "-n", os.path.join(work, "n"),
                             "-a", f"127.0.0.1:{port}", "-f", vcl, "-s", "malloc,256m", "-p", "thread_pools=1", "-F"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return proc, [proc.pid, *map(int, children)], f"http://127.0.0.1:{port}"


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def start_nginx(cpu):
    port = free_port()
    conf = open(os.path.join(ROOT, "bench", "peers", "nginx.conf")).read().replace("__PORT__", str(port))
    path = f"/tmp/shardgate-bench-nginx-{port}.conf"
    open(path, "w").write(conf)
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-c", path, "-p", "/tmp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}/"


def start_shardgate(cpu, driver, shards=1, extra=(), binary=BIN, rate_limit="off"):
    """Starts shardgate on a free port with a fresh data directory; returns
    once it is ready, with its base URL."""
    data_dir = tempfile.mkdtemp(prefix="shardgate-bench-")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), binary, "--listen", "127.0.0.1:0", "--shards", str(shards),
                             "--io-driver", driver, "--rate-limit", rate_limit, "--data-dir", data_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            addr = line.split()[-1]
            break
    else:
        raise RuntimeError("shardgate did not start")
    wait_ready(f"http://{addr}")
    return proc, f"http://{addr}"


def wait_ready(base, timeout=30):
    """The port opens before the log is recovered: wait for /readyz 200."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base} never became ready")


def stop(procs):
    """SIGTERM to every process still running, then wait for each (servers
    drain and exit); one that is still there after 10 s is killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_origin(cpu):
    """The bench origin simulator: cacheable 64-byte answers."""
    port = free_port()
    bench = os.path.join(ROOT, "target", "release", "shardgate-bench")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), bench, "origin", "--listen", f"127.0.0.1:{port}",
                             "--cache-control", "max-age=86400", "--body-bytes", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def fetch(url):
    urllib.request.urlopen(url).read()


def put(base, key):
    request = urllib.request.Request(f"{base}/v1/kv/{key}", data=VALUE, method="PUT")
    urllib.request.urlopen(request).read()


def run_wrk(pid, url, cpu, duration, connections, pipeline):
    args = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    env = dict(os.environ)
    if pipeline > 1:
        args += ["-s", os.path.join(ROOT, "bench", "wrk", "pipeline.lua")]
        env["PIPELINE_DEPTH"] = str(pipeline)
    before = cpu_us(pid)
    out = subprocess.run(args + [url], capture_output=True, text=True, env=env, check=True).stdout
    after = cpu_us(pid)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")

    def latency(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    return {"rps": requests / duration, "cpu_us": (after - before) / requests, "p50_us": latency(50), "p99_us": latency(99)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--baseline", help="another shardgate binary measured in the same rounds")
    parser.add_argument("--driver", default="both", choices=["uring", "epoll", "both"])
    parser.add_argument("--gateway", action="store_true", help="also measure gateway cache hits")
    parser.add_argument("--varnish", action="store_true", help="and Varnish cache hits of the same origin")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install wrk nginx-light util-linux")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")

    procs = []
    try:
        nginx, nginx_url = start_nginx(args.server_cpu)
        procs.append(nginx)
        servers = {"nginx return 200": (nginx.pid, nginx_url)}
        builds = [("shardgate", BIN)] + ([("baseline", args.baseline)] if args.baseline else [])
        drivers = ("uring", "epoll") if args.driver == "both" else (args.driver,)
        origin_url = None
        if args.gateway:
            origin, origin_url = start_origin(args.client_cpu)
            procs.append(origin)
            if args.varnish:
                varnish, pids, varnish_url = start_varnish(args.server_cpu, origin_url)
                procs.append(varnish)
                fetch(f"{varnish_url}/item/1")
                servers["varnish hit"] = (pids, f"{varnish_url}/item/1")
        for label, binary in builds:
            for driver in drivers:
                proc, base = start_shardgate(args.server_cpu, driver, binary=binary)
                procs.append(proc)
                put(base, "bench")
                servers[f"{label} GET ({driver})"] = (proc.pid, f"{base}/v1/kv/bench")
                if origin_url:
                    proc, base = start_shardgate(args.server_cpu, driver, binary=binary, extra=("--origin", origin_url))
                    procs.append(proc)
                    fetch(f"{base}/item/1")
                    servers[f"{label} gateway hit ({driver})"] = (proc.pid, f"{base}/item/1")
        cases = [(name, pipeline) for pipeline in (1, 16) for name in servers]
        results = {case: [] for case in cases}
        for round_number in range(args.rounds):
            for name, pipeline in cases:
                pid, url = servers[name]
                r = run_wrk(pid, url, args.client_cpu, args.duration, args.connections, pipeline)
                results[(name, pipeline)].append(r)
                print(f"round {round_number + 1} {name:28} x{pipeline:<2} {r['rps']:>10.0f} req/s "
                      f"{r['cpu_us']:.3f} µs/req p50 {r['p50_us']:.0f} µs p99 {r['p99_us']:.0f} µs", flush=True)
    finally:
        stop(procs)

    lines = [
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on `{socket.gethostname()}` "
        f"({os.cpu_count()} CPUs, {os.uname().release}); servers on CPU {args.server_cpu}, "
        f"`wrk -t1 -c{args.connections}` on CPU {args.client_cpu}; {args.rounds} rounds × {args.duration} s, medians.",
        "",
        "| server | pipeline | requests/s | p50 | p99 | CPU µs/request | ratio to nginx (paired median) | ratio to baseline (paired median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, pipeline in cases:
        runs = results[(name, pipeline)]
        base = results[("nginx return 200", pipeline)]
        ratio = statistics.median(r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base))
        med = lambda k: statistics.median(r[k] for r in runs)
        # wrk records one latency sample per pipelined batch, so its
        # percentiles mean nothing per request there.
        p50 = f"{med('p50_us'):.0f} µs" if pipeline == 1 else "n/a"
        p99 = f"{med('p99_us'):.0f} µs" if pipeline == 1 else "n/a"
        against = name.replace("shardgate ", "baseline ", 1)
        if name.startswith("shardgate ") and (against, pipeline) in results:
            pairs = zip(runs, results[(against, pipeline)])
            to_baseline = f"{statistics.median(r['cpu_us'] / b['cpu_us'] for r, b in pairs):.3f}"
        else:
            to_baseline = ""
        lines.append(f"| {name} | {pipeline} | {med('rps'):,.0f} | {p50} | {p99} | {med('cpu_us'):.2f} | {ratio:.2f} | {to_baseline} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
