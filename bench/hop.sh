#!/usr/bin/env bash
# The cross-core hop: server CPU per GET when the key is owned by
# the core that received the request versus by the other core.
#
# The server runs --shards 2 with both shard threads on SERVER_CPU (one core
# time-shared, so the generator keeps the other core to itself); the
# generator runs on CLIENT_CPU. Usage: bench/hop.sh [OUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-5}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-5}
cargo build --release -q -p shardgate -p shardgate-bench
out=$(mktemp)
data=$(mktemp -d)
taskset -c "$SERVER_CPU" target/release/shardgate --listen 127.0.0.1:0 --shards 2 --rate-limit off \
    --data-dir "$data" >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$out" "$data"' EXIT
for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out")
for _ in $(seq 200); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.05; done
taskset -c "$CLIENT_CPU" target/release/shardgate-bench hop --addr "$addr" --server-pid "$server" \
    --rounds "$ROUNDS" --seconds "$SECONDS_PER_PHASE" ${1:+--out "$1"}
