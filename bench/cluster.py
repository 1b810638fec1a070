#!/usr/bin/env python3
"""Cluster figures (docs/spec.md §8) on a loopback cluster: shardgate nodes
on SERVER_CPU; Redis, NATS (JetStream), HAProxy, the origin simulator and
the load generators on CLIENT_CPU.

  cpu        CPU per gateway hit of one node in cluster mode (Redis and
             NATS, the rate limit on: permits leased from Redis) against
             the same node alone (the rate limit on, leased from its own
             shard); wrk with one API key, servers alternating, paired
             rounds.
  ratelimit  one API key offering twice its limit through HAProxy to
             paths on three nodes for 30 s, at limits of 200/s and
             2,000/s: admitted requests against the limit.
  failover   a node accepts 2,000 sync writes while the origin (16 at
             once, 100 ms each) is slower than they arrive, then is
             killed with SIGKILL: time until the two survivors have
             delivered every write, against the same run without the kill.
  hitratio   a Zipf 0.99 trace over 200,000 paths through HAProxy to three
             nodes with a third of the cache each, against one node with
             all of it (both behind HAProxy).

Usage: python3 bench/cluster.py [--parts cpu,ratelimit,failover,hitratio]
                                [--rounds 5] [--out FILE]
Needs: haproxy, redis-server, nats-server, wrk (apt-get install haproxy
redis-server nats-server wrk), a release build.
"""
import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk"))
import compare  # noqa: E402

ROOT = compare.ROOT
BENCH = os.path.join(ROOT, "target", "release", "shardgate-bench")
SERVER_CPU, CLIENT_CPU = 0, 1
HOST = "api.bench"


def spawn(args, cpu=CLIENT_CPU):
    return subprocess.Popen(["taskset", "-c", str(cpu), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


stop = compare.stop


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def metric(base, name, labels=""):
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + labels))


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"never happened: {what}")


class Services:
    """Redis, NATS with JetStream and an origin simulator, on CLIENT_CPU."""

    def __init__(self, work, origin_args):
        self.work = work
        self.redis_port, self.nats_port, self.origin_port = (compare.free_port() for _ in range(3))
        self.procs = [
            spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]),
            spawn(["nats-server", "-a", "127.0.0.1", "-p", str(self.nats_port), "-js", "-sd",
                   os.path.join(work, "nats")]),
            spawn([BENCH, "origin", "--listen", f"127.0.0.1:{self.origin_port}", *origin_args]),
        ]
        for port in (self.redis_port, self.nats_port, self.origin_port):
            compare.wait_port(port)
        self.origin = f"http://127.0.0.1:{self.origin_port}"

    def cluster_flags(self, node):
        return ["--cluster-redis", f"redis://127.0.0.1:{self.redis_port}",
                "--cluster-nats", f"nats://127.0.0.1:{self.nats_port}", "--node-id", node, "--cluster-size", "3"]

    def origin_stats(self):
        return get_json(f"{self.origin}/_origin/stats")

    def stop(self):
        stop(self.procs)


def start_node(services, node, extra=(), cluster=True, rate_limit="off"):
    flags = ["--origin", services.origin, *extra] + (services.cluster_flags(node) if cluster else [])
    proc, base = compare.start_shardgate(SERVER_CPU, "uring", extra=flags, rate_limit=rate_limit)
    if cluster:
        wait_for(f"{node} reaches redis and nats", lambda: metric(base, "shardgate_cluster_up") == 2)
    return proc, base


def start_haproxy(work, bases):
    """HAProxy as deploy/cluster/haproxy.cfg configures it, in front of `bases`."""
    port = compare.free_port()
    lines = []
    for line in open(os.path.join(ROOT, "deploy", "cluster", "haproxy.cfg")).read().splitlines():
        if line.strip().startswith("server "):
            continue
        line = line.replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{port}")
        lines.append(line.replace("/tmp/shardgate-haproxy.sock", os.path.join(work, "haproxy.sock")))
    lines += [f"    server n{i + 1} {base.removeprefix('http://')}" for i, base in enumerate(bases)]
    path = os.path.join(work, f"haproxy-{port}.cfg")
    open(path, "w").write("\n".join(lines) + "\n")
    proc = spawn(["haproxy", "-f", path, "-db"])
    compare.wait_port(port)
    return proc, f"127.0.0.1:{port}"


def scenario(work, name, rate, duration, keys, zipf=0.0, api_keys=0, connections=64):
    path = os.path.join(work, f"{name}.toml")
    open(path, "w").write(f"""name = "{name}"
description = "{rate}/s open loop"
mode = "open"
duration = "{duration}s"
connections = {connections}
rate = {rate}
timeout = "10s"

[workload]
keys = {keys}
zipf = {zipf}
read_fraction = 1.0
value_bytes = 64
api_keys = {api_keys}
preload = 0
""")
    return path


def run_scenario(path, addr, out_dir, label, seed=1):
    subprocess.run(["taskset", "-c", str(CLIENT_CPU), BENCH, "run", path, "--addr", addr, "--api", "gateway",
                    "--server-name", label, "--out-dir", out_dir, "--no-preload", "--seed", str(seed)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = os.path.basename(path).removesuffix(".toml")
    return json.load(open(os.path.join(out_dir, f"{name}-{label}.json")))


def cpu_part(work, rounds, duration):
    """Paired rounds of wrk against the node alone and in cluster mode."""
    services = Services(work, ["--cache-control", "max-age=86400", "--body-bytes", "64"])
    procs = []
    try:
        rate = "1000000/1s"  # never reached: every request takes a permit, none is refused
        alone, alone_base = start_node(services, "alone", cluster=False, rate_limit=rate)
        member, member_base = start_node(services, "n1", rate_limit=rate)
        procs += [alone, member]
        servers = {"alone": (alone.pid, alone_base), "cluster": (member.pid, member_base)}
        for _, base in servers.values():
            compare.fetch(f"{base}/item/1")
        runs = {name: [] for name in servers}
        for round_number in range(rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:
                pid, base = servers[name]
                runs[name].append(wrk(pid, f"{base}/item/1", duration))
                print(f"cpu round {round_number + 1} {name:8} {runs[name][-1]['cpu_us']:.2f} µs/req "
                      f"{runs[name][-1]['rps']:.0f}/s", flush=True)
        leases = metric(member_base, "shardgate_cluster_leases_total")
        requests = metric(member_base, "shardgate_requests_total", '{shard="0",route="gateway"')
        ratios = [c["cpu_us"] / a["cpu_us"] for a, c in zip(runs["alone"], runs["cluster"])]
        return {"alone": runs["alone"], "cluster": runs["cluster"], "ratios": ratios, "leases": leases,
                "requests": requests}
    finally:
        stop(procs)
        services.stop()


def wrk(pid, url, duration):
    args = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", "-c64", f"-d{duration}s", "-H", "X-API-Key: bench",
            "-H", f"Host: {HOST}", url]
    before = compare.cpu_us([pid])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    after = compare.cpu_us([pid])
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": requests / duration, "cpu_us": (after - before) / requests}


def ratelimit_part(work, limits=(200, 2000), duration=30):
    results = []
    for limit in limits:
        services = Services(os.path.join(work, f"rl-{limit}"), ["--cache-control", "max-age=86400"])
        procs = []
        try:
            nodes = [start_node(services, f"n{i}", rate_limit=f"{limit}/1s") for i in (1, 2, 3)]
            procs += [proc for proc, _ in nodes]
            haproxy, addr = start_haproxy(work, [base for _, base in nodes])
            procs.append(haproxy)
            path = scenario(work, f"ratelimit-{limit}", 2 * limit, duration, keys=3000, api_keys=1)
            row = run_scenario(path, addr, os.path.join(work, "json"), "cluster")["rows"][0]
            accepted = row["issued"] * (1 - (row["status_429_pct"] + row["error_pct"]) / 100)
            served = [metric(base, "shardgate_requests_total", '{shard="0",route="gateway",status="200"')
                      for _, base in nodes]
            results.append({"limit": limit, "offered": row["issued"], "accepted": accepted,
                            "expected": limit * duration, "errors_pct": row["error_pct"], "per_node": served})
            print(f"ratelimit {limit}/s: {accepted:.0f} admitted of {row['issued']} offered, "
                  f"expected {limit * duration} ({(accepted / (limit * duration) - 1) * 100:+.1f}%), "
                  f"per node {served}", flush=True)
        finally:
            stop(procs)
            services.stop()
    return results


def write_batch(base, count, threads=4):
    """`count` async writes, `threads` connections; returns once every 202 came."""
    addr = base.removeprefix("http://")
    host, port = addr.split(":")

    def send(start):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for i in range(start, count, threads):
            connection.request("POST", f"/w/{i}", body=b"payload",
                               headers={"Host": HOST, "Prefer": "respond-async"})
            response = connection.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"write {i}: {response.status}")
        connection.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(threads)))


def failover_part(work, writes=2000):
    results = {}
    for case in ("no kill", "kill"):
        services = Services(os.path.join(work, f"fo-{case.replace(' ', '-')}"),
                            ["--latency", "100ms", "--max-concurrency", "16"])
        procs = []
        try:
            nodes = [start_node(services, f"n{i}", extra=["--durability", "sync", "--write-retries", "100"])
                     for i in (1, 2, 3)]
            procs += [proc for proc, _ in nodes]
            started = time.time()
            write_batch(nodes[0][1], writes)
            accepted = time.time()
            before = services.origin_stats()["writes"]
            if case == "kill":
                nodes[0][0].kill()
                nodes[0][0].wait()
            wait_for("every write delivered", lambda: services.origin_stats()["writes"] >= writes, timeout=300)
            done = time.time()
            stats = services.origin_stats()
            results[case] = {"accept_s": accepted - started, "delivered_at_kill": before,
                             "drain_s": done - accepted, "repeats": stats["write_repeats"]}
            print(f"failover {case}: {writes} accepted in {accepted - started:.1f} s, {before} delivered by then, "
                  f"the rest {done - accepted:.1f} s later, {stats['write_repeats']} repeated", flush=True)
        finally:
            stop(procs)
            services.stop()
    return results


def hitratio_part(work, keys=200_000, rate=4000, duration=40, cache="48MiB", cache_third="16MiB"):
    results = {}
    for case, count, cache_bytes in (("one node", 1, cache), ("three nodes", 3, cache_third)):
        services = Services(os.path.join(work, f"hr-{count}"), ["--cache-control", "max-age=86400",
                                                                  "--body-bytes", "1024"])
        procs = []
        try:
            nodes = [start_node(services, f"n{i}", extra=["--cache-bytes", cache_bytes], cluster=count > 1)
                     for i in range(1, count + 1)]
            procs += [proc for proc, _ in nodes]
            haproxy, addr = start_haproxy(work, [base for _, base in nodes])
            procs.append(haproxy)
            path = scenario(work, f"zipf-{count}", rate, duration, keys=keys, zipf=0.99)
            out = os.path.join(work, "json")
            run_scenario(path, addr, out, f"warm-{count}", seed=1)
            result = run_scenario(path, addr, out, f"run-{count}", seed=2)
            classes = {c["class"]: c["count"] for c in result["series"][0]["classes"]}
            ratio = classes["hit"] / max(1, classes["hit"] + classes["miss"])
            results[case] = {"hits": classes["hit"], "misses": classes["miss"], "ratio": ratio,
                             "cache_bytes_per_node": cache_bytes}
            print(f"hitratio {case}: {ratio * 100:.1f}% ({classes['hit']} hits, {classes['miss']} misses)", flush=True)
        finally:
            stop(procs)
            services.stop()
    return results


def markdown(results, args):
    out = [f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on the development VM "
           f"(2 vCPU, loopback): shardgate nodes on CPU {SERVER_CPU}; Redis 7.0, NATS 2.9 (JetStream), "
           f"HAProxy 2.6, the origin simulator and the generators on CPU {CLIENT_CPU}. "
           f"`python3 bench/cluster.py --parts {args.parts} --rounds {args.rounds}`.", ""]
    if "cpu" in results:
        r = results["cpu"]
        out += ["## CPU per gateway hit: a node in cluster mode against the same node alone", "",
                "One API key, the rate limit on (`1000000/1s`: every request takes a permit), wrk -c64, "
                f"{len(r['ratios'])} paired rounds, servers alternating.", "",
                "| round | alone µs/req | cluster µs/req | ratio |", "|---|---|---|---|"]
        for i, (a, c, ratio) in enumerate(zip(r["alone"], r["cluster"], r["ratios"]), 1):
            out.append(f"| {i} | {a['cpu_us']:.2f} | {c['cpu_us']:.2f} | {ratio:.3f} |")
        out += ["", f"Median ratio **{statistics.median(r['ratios']):.3f}**; the cluster node asked Redis for "
                f"{r['leases']:.0f} leases over {r['requests']:.0f} requests.", ""]
    if "ratelimit" in results:
        out += ["## One API key at twice its limit, through HAProxy, across three nodes", "",
                "| limit | offered | admitted | limit × 30 s | error | admitted per node (200s) |", "|---|---|---|---|---|---|"]
        for r in results["ratelimit"]:
            error = (r["accepted"] / r["expected"] - 1) * 100
            out.append(f"| {r['limit']}/s | {r['offered']} | {r['accepted']:.0f} | {r['expected']} | "
                       f"**{error:+.1f}%** | {', '.join(f'{n:.0f}' for n in r['per_node'])} |")
        out.append("")
    if "failover" in results:
        out += ["## A killed node's queued writes", "",
                "2,000 writes (`--durability sync`, so each is in the stream before its 202) sent to one node "
                "while the origin serves 16 at once in 100 ms (160/s); then that node is killed (or not).", "",
                "| case | accepted in | delivered when the last 202 came | rest delivered after | repeated deliveries |",
                "|---|---|---|---|---|"]
        for case, r in results["failover"].items():
            out.append(f"| {case} | {r['accept_s']:.1f} s | {r['delivered_at_kill']} | **{r['drain_s']:.1f} s** | "
                       f"{r['repeats']} |")
        out.append("")
    if "hitratio" in results:
        out += ["## Hit ratio: three nodes against one, the same cache in total", "",
                "Zipf 0.99 over 200,000 paths, 1 KiB bodies, 4,000/s for 40 s after a 40 s warm-up, "
                "through HAProxy in both cases.", "",
                "| case | cache per node | hits | misses | hit ratio |", "|---|---|---|---|---|"]
        for case, r in results["hitratio"].items():
            out.append(f"| {case} | {r['cache_bytes_per_node']} | {r['hits']} | {r['misses']} | "
                       f"{r['ratio'] * 100:.1f}% |")
        one, three = results["hitratio"]["one node"]["ratio"], results["hitratio"]["three nodes"]["ratio"]
        out += ["", f"Three nodes ÷ one: **{three / one:.3f}**.", ""]
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="cpu,ratelimit,failover,hitratio")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", f"{datetime.date.today()}-cluster.md"))
    args = parser.parse_args()
    for tool in ("haproxy", "redis-server", "nats-server", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install haproxy redis-server nats-server wrk")
    work = tempfile.mkdtemp(prefix="shardgate-cluster-bench-")
    os.makedirs(os.path.join(work, "json"))
    parts = args.parts.split(",")
    results = {}
    try:
        if "cpu" in parts:
            results["cpu"] = cpu_part(work, args.rounds, args.duration)
        if "ratelimit" in parts:
            results["ratelimit"] = ratelimit_part(work)
        if "failover" in parts:
            results["failover"] = failover_part(work)
        if "hitratio" in parts:
            results["hitratio"] = hitratio_part(work)
    finally:
        json.dump(results, open(args.out.removesuffix(".md") + ".json", "w"), indent=1)
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(results, args)
    open(args.out, "w").write(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
