#!/usr/bin/env bash
# Compaction figures: disk use against live data, compaction step
# durations and request latency under an overwrite-only load
# (bench/scenarios/overwrite.toml) on one shard with 8 MiB segments.
# /metrics is sampled every second; the table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SEGMENT=${SEGMENT:-8MiB}
cargo build --release -q -p shardgate -p shardgate-bench
data=$(mktemp -d "${DATA_PARENT:-$PWD}/shardgate-compaction.XXXXXX")
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
out="$data/out"
taskset -c "$SERVER_CPU" target/release/shardgate --listen 127.0.0.1:0 --shards 1 --rate-limit off \
    --segment-bytes "$SEGMENT" --data-dir "$data/db" >"$out" 2>"$data/err" &
pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out")
for _ in $(seq 200); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.05; done
python3 - "$addr" "$data/samples" <<'PY' &
import sys, time, urllib.request
addr, path = sys.argv[1], sys.argv[2]
with open(path, "w") as out:
    while True:
        try:
            text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
        except Exception:
            break
        values = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            values[name] = values.get(name, 0.0) + float(value)
        out.write(repr(values) + "\n")
        out.flush()
        time.sleep(1)
PY
sampler=$!
taskset -c "$CLIENT_CPU" target/release/shardgate-bench run bench/scenarios/overwrite.toml --addr "$addr" \
    --server-name shardgate --server-pid "$pid" --out-dir "$data/json" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
target/release/shardgate-bench table "$data/json"/overwrite-shardgate.json
python3 - "$data/samples" "$SEGMENT" <<'PY'
import ast, sys
samples = [ast.literal_eval(line) for line in open(sys.argv[1])]
def get(s, name):
    return sum(v for k, v in s.items() if k == name or k.startswith(name + "{"))
rows = [(get(s, "shardgate_log_disk_bytes"), get(s, "shardgate_log_live_bytes")) for s in samples]
rows = [(d, l) for d, l in rows if l > 0]
last = samples[-1]
ratios = [d / l for d, l in rows]
steps = {k: v for k, v in last.items() if k.startswith("shardgate_compaction_step_seconds_bucket")}
count = get(last, "shardgate_compaction_step_seconds_count")
def share_under(le):
    return sum(v for k, v in steps.items() if f'le="{le}"' in k) / count if count else float("nan")
print()
print(f"segment size {sys.argv[2]}; {len(rows)} one-second samples of /metrics")
print()
print("| figure | value |")
print("|---|---|")
print(f"| live bytes at the end | {rows[-1][1] / 2**20:.1f} MiB |")
print(f"| disk bytes at the end | {rows[-1][0] / 2**20:.1f} MiB |")
print(f"| disk / live, median of samples | {sorted(ratios)[len(ratios) // 2]:.2f} |")
print(f"| disk / live, worst sample | {max(ratios):.2f} |")
print(f"| log bytes written | {get(last, 'shardgate_log_bytes_written_total') / 2**20:.0f} MiB |")
print(f"| segments compacted | {get(last, 'shardgate_compactions_total'):.0f} |")
print(f"| bytes reclaimed | {get(last, 'shardgate_compaction_reclaimed_bytes_total') / 2**20:.0f} MiB |")
print(f"| compaction steps | {count:.0f} |")
print(f"| steps under 0.5 ms / 1 ms / 2.5 ms | {share_under('0.0005'):.4f} / {share_under('0.001'):.4f} / {share_under('0.0025'):.4f} |")
print(f"| event-loop stalls over 10 ms | {get(last, 'shardgate_event_loop_stalls_total'):.0f} |")
PY
