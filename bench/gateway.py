#!/usr/bin/env python3
"""Summarises a bench/gateway.sh run: medians over rounds, per server."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]


def rows(scenario, server):
    found = []
    for path in sorted(glob.glob(os.path.join(out, f"{scenario}-{server}-r*.json"))):
        with open(path) as f:
            data = json.load(f)
        found.append(data["rows"][0])
    return found


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


servers = ["shardgate", "varnish"]
summary = {}
for server in servers:
    hits = rows("gateway-hits", server)
    fixed = rows("gateway-p99", server)
    storm = rows("gateway-stampede", server)
    cpu = median([r["cpu_us_per_request"] for r in hits])
    summary[server] = {
        "rounds": len(hits),
        "closed_rps": median([r["throughput_rps"] for r in hits]),
        "cpu_us": cpu,
        "hits_per_core_s": 1e6 / cpu if cpu == cpu and cpu > 0 else float("nan"),
        "p99_us": median([r["p99_us"] for r in fixed]),
        "p50_us": median([r["p50_us"] for r in fixed]),
        "fixed_errors": sum(r["failures"] for r in fixed),
        "storm_p99_us": median([r["p99_us"] for r in storm]),
        "storm_max_us": median([r["max_us"] for r in storm]),
        "storm_errors": sum(r["failures"] for r in storm),
    }
origin = {}
with open(os.path.join(out, "stampede-origin.txt")) as f:
    for line in f:
        server, _, count = line.split()
        origin.setdefault(server, []).append(int(count))

ratios = {}
with open(os.path.join(out, "hit-ratio.txt")) as f:
    for line in f:
        server, _, ratio = line.split()
        ratios.setdefault(server, []).append(ratio)

s, v = summary["shardgate"], summary["varnish"]
print(f"Rounds: {s['rounds']} (medians). Each server on one core; generator and origin on the other.\n")
print("| | shardgate | Varnish | ratio |")
print("|---|---|---|---|")
print(f"| hits/s, closed loop (generator-bound when both saturate it) | {s['closed_rps']:,.0f} | {v['closed_rps']:,.0f} | {s['closed_rps'] / v['closed_rps']:.2f}x |")
print(f"| server CPU per hit | {s['cpu_us']:.1f} µs | {v['cpu_us']:.1f} µs | {s['cpu_us'] / v['cpu_us']:.2f}x |")
print(f"| hits per core-second (1e6 / CPU per hit) | {s['hits_per_core_s']:,.0f} | {v['hits_per_core_s']:,.0f} | {s['hits_per_core_s'] / v['hits_per_core_s']:.2f}x |")
print(f"| p50 at 20,000/s | {s['p50_us']} µs | {v['p50_us']} µs | {s['p50_us'] / v['p50_us']:.2f}x |")
print(f"| p99 at 20,000/s | {s['p99_us']} µs | {v['p99_us']} µs | {s['p99_us'] / v['p99_us']:.2f}x |")
print(f"| errors at 20,000/s | {s['fixed_errors']} | {v['fixed_errors']} | |")
print(f"| hit ratio of both runs, as the server counts (per round) | {', '.join(ratios.get('shardgate', []))} | {', '.join(ratios.get('varnish', []))} | |")
print()
print("Stampede (one path, max-age=1 + stale-while-revalidate=30, 50 ms origin, 10,000/s for 30 s):\n")
print("| | shardgate | Varnish |")
print("|---|---|---|")
print(f"| origin requests per 30 s run (per round) | {', '.join(map(str, origin.get('shardgate', [])))} | {', '.join(map(str, origin.get('varnish', [])))} |")
print(f"| client p99 | {s['storm_p99_us']} µs | {v['storm_p99_us']} µs |")
print(f"| client max | {s['storm_max_us']} µs | {v['storm_max_us']} µs |")
print(f"| errors | {s['storm_errors']} | {v['storm_errors']} |")
