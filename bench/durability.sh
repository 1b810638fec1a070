#!/usr/bin/env bash
# Durability figures: the data disk's fdatasync latency, then sync-durable
# PUT throughput and latency on one shard at 1, 16 and 256 clients, and
# async PUTs for comparison. Server on SERVER_CPU, generator on CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
cargo build --release -q -p shardgate -p shardgate-bench
data=$(mktemp -d "${DATA_PARENT:-$PWD}/shardgate-durability.XXXXXX")
trap 'rm -rf "$data"' EXIT
python3 bench/disk.py "$data"
files=()
for durability in sync async; do
    for clients in 1 16 256; do
        rm -rf "$data/$durability"
        out=$(mktemp)
        taskset -c "$SERVER_CPU" target/release/shardgate --listen 127.0.0.1:0 --shards 1 --rate-limit off \
            --durability "$durability" --data-dir "$data/$durability" >"$out" 2>/dev/null &
        pid=$!
        for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
        addr=$(sed -n 's/^listening on //p' "$out")
        for _ in $(seq 200); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.05; done
        taskset -c "$CLIENT_CPU" target/release/shardgate-bench run bench/scenarios/sync-put.toml --addr "$addr" \
            --server-name "shardgate-$durability" --server-pid "$pid" --connections "$clients" --out-dir "$data/json" >/dev/null
        files+=("$data/json/sync-put-c$clients-shardgate-$durability.json")
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
target/release/shardgate-bench table "${files[@]}"
