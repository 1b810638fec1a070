#!/usr/bin/env bash
# Durability figures: the data disk's fdatasync latency, then sync-durable
# PUT throughput and latency on one shard at 1, 16 and 256 clients, and
# async PUTs for comparison. Server on SERVER_CPU, generator on CLIENT_CPU.
# BASELINE=path/to/older/shardgate adds that build, the two taking turns
# in each of ROUNDS rounds (default 1; the table has one row per run);
# CLIENTS="256" and DURABILITIES="sync" pick a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-1 16 256}
DURABILITIES=${DURABILITIES:-sync async}
cargo build --release -q -p shardgate -p shardgate-bench
data=$(mktemp -d "${DATA_PARENT:-$PWD}/shardgate-durability.XXXXXX")
trap 'rm -rf "$data"' EXIT
python3 bench/disk.py "$data"
servers=("shardgate=target/release/shardgate")
[ -n "${BASELINE:-}" ] && servers+=("baseline=$BASELINE")
files=()
for round in $(seq "$ROUNDS"); do
    order=("${servers[@]}")
    if [ $((round % 2)) -eq 0 ] && [ ${#servers[@]} -eq 2 ]; then order=("${servers[1]}" "${servers[0]}"); fi
    for durability in $DURABILITIES; do
        for clients in $CLIENTS; do
            for server in "${order[@]}"; do
                name=${server%%=*} binary=${server#*=}
                rm -rf "$data/$durability"
                out=$(mktemp)
                taskset -c "$SERVER_CPU" "$binary" --listen 127.0.0.1:0 --shards 1 --rate-limit off \
                    --durability "$durability" --data-dir "$data/$durability" >"$out" 2>/dev/null &
                pid=$!
                for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
                addr=$(sed -n 's/^listening on //p' "$out")
                for _ in $(seq 200); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.05; done
                label="$name-$durability-r$round"
                taskset -c "$CLIENT_CPU" target/release/shardgate-bench run bench/scenarios/sync-put.toml --addr "$addr" \
                    --server-name "$label" --server-pid "$pid" --connections "$clients" --out-dir "$data/json" >/dev/null
                files+=("$data/json/sync-put-c$clients-$label.json")
                kill "$pid"; wait "$pid" 2>/dev/null || true
                rm -f "$out"
            done
        done
    done
done
target/release/shardgate-bench table "${files[@]}"
