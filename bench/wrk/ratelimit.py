#!/usr/bin/env python3
"""Server CPU per request with the rate limiter on versus off, in the same run.

Three servers per shard count, all pinned to SERVER_CPU: `--rate-limit off`,
and `--rate-limit 4000000000/1s` (on, never refusing, so every request pays
the full check) driven with one hot API key and with 100,000 distinct keys.
Every request carries an X-API-Key (bench/wrk/apikey.lua), also when the
limiter is off, so the only difference is the limiter. With --shards 2 half
the identities are owned by the other shard: those requests spend leases.
Servers alternate within each round; ratios are paired within the round.

Usage: python3 bench/wrk/ratelimit.py [--rounds 3] [--duration 8] [--out FILE]
"""
import argparse
import datetime
import os
import socket
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

LIMIT_ON = "4000000000/1s"


def start(cpu, shards, limit):
    return compare.start_shardgate(cpu, "auto", shards=shards, rate_limit=limit)


def run(pid, url, cpu, duration, connections, keys):
    os.environ["API_KEYS"] = str(keys)
    script = os.path.join(compare.ROOT, "bench", "wrk", "apikey.lua")
    args = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script]
    before = compare.cpu_us(pid)
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    after = compare.cpu_us(pid)
    requests = int(compare.re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return {"rps": requests / duration, "cpu_us": (after - before) / requests}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    procs, servers = [], {}
    cases = []
    try:
        for shards in (1, 2):
            for limit, keys, name in (("off", 1, "off"), (LIMIT_ON, 1, "on, 1 hot key"),
                                      (LIMIT_ON, 100_000, "on, 100k keys")):
                if (shards, limit) not in servers:
                    proc, base = start(args.server_cpu, shards, limit)
                    procs.append(proc)
                    compare.put(base, "bench")
                    servers[(shards, limit)] = (proc.pid, f"{base}/v1/kv/bench")
                cases.append((shards, limit, keys, name))
        results = {case: [] for case in cases}
        for round_number in range(args.rounds):
            for case in cases:
                shards, limit, keys, name = case
                pid, url = servers[(shards, limit)]
                r = run(pid, url, args.client_cpu, args.duration, args.connections, keys)
                results[case].append(r)
                print(f"round {round_number + 1} shards {shards} {name:16} {r['rps']:>9.0f} req/s "
                      f"{r['cpu_us']:.3f} µs/req", flush=True)
    finally:
        compare.stop(procs)
    lines = [
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on `{socket.gethostname()}`; "
        f"servers on CPU {args.server_cpu}, `wrk -t1 -c{args.connections}` with bench/wrk/apikey.lua on CPU "
        f"{args.client_cpu}; {args.rounds} rounds × {args.duration} s, medians; GET of a stored 64-byte value.",
        "",
        "| shards | limiter | requests/s | CPU µs/request | extra vs off (paired median) |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        shards, limit, keys, name = case
        runs = results[case]
        base = results[(shards, "off", 1, "off")]
        extra = statistics.median(r["cpu_us"] - b["cpu_us"] for r, b in zip(runs, base))
        ratio = statistics.median(r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base))
        med = lambda k: statistics.median(r[k] for r in runs)
        lines.append(f"| {shards} | {name} | {med('rps'):,.0f} | {med('cpu_us'):.2f} | "
                     f"{extra:+.2f} µs ({ratio:.2f}x) |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
