#!/usr/bin/env bash
# Recovery figures: restart time per GiB of log, with the hint
# files the server writes and with them deleted. One shard, 64 MiB
# segments, 4 KiB values written by wrk (bench/wrk/put.lua). Each restart is
# measured from the shard's own "recovered ... millis=" log line. When
# /proc/sys/vm/drop_caches is writable the page cache is dropped first
# (cold); otherwise the figures are warm-cache and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FILL_SECONDS=${FILL_SECONDS:-20}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p shardgate
data=$(mktemp -d "${DATA_PARENT:-$PWD}/shardgate-recovery.XXXXXX")
trap 'rm -rf "$data"' EXIT
start() {
    taskset -c "$SERVER_CPU" target/release/shardgate --listen 127.0.0.1:0 --shards 1 --rate-limit off \
        --segment-bytes 64MiB --data-dir "$data/db" >"$data/out" 2>"$data/err" &
    pid=$!
    for _ in $(seq 600); do grep -q 'msg=recovered' "$data/err" && break; sleep 0.05; done
    addr=$(sed -n 's/^listening on //p' "$data/out")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
start
VALUE_BYTES=4096 taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d"${FILL_SECONDS}s" -s bench/wrk/put.lua "http://$addr/" >/dev/null
stop
cache="warm page cache"
if [ -w /proc/sys/vm/drop_caches ] && sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then cache="page cache dropped before each restart"; fi
measure() {
    local label=$1
    for round in $(seq "$ROUNDS"); do
        sync
        [ "$cache" = "warm page cache" ] || echo 3 >/proc/sys/vm/drop_caches
        start
        line=$(grep 'msg=recovered' "$data/err")
        stop
        millis=$(sed -n 's/.* millis=\([0-9]*\).*/\1/p' <<<"$line")
        bytes=$(sed -n 's/.* log_bytes=\([0-9]*\).*/\1/p' <<<"$line")
        hinted=$(sed -n 's/.* hinted_segments=\([0-9]*\).*/\1/p' <<<"$line")
        segments=$(sed -n 's/.* segments=\([0-9]*\).*/\1/p' <<<"$line")
        keys=$(sed -n 's/.* keys=\([0-9]*\).*/\1/p' <<<"$line")
        echo "$label $round $millis $bytes $hinted $segments $keys"
    done
}
{ measure hints; rm -f "$data"/db/shard-000/*.hint; measure none; } >"$data/results"
python3 - "$data/results" "$cache" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(f"One shard, 64 MiB segments, 4 KiB values; {sys.argv[2]}; {len(rows) // 2} restarts each, medians.\n")
print("| recovery | log | segments (hinted) | keys | restart time | per GiB of log |")
print("|---|---|---|---|---|---|")
for label, name in (("hints", "with hint files"), ("none", "without (segments read whole)")):
    runs = [r for r in rows if r[0] == label]
    millis = statistics.median(int(r[2]) for r in runs)
    log_bytes = int(runs[0][3])
    gib = log_bytes / 2**30
    print(f"| {name} | {log_bytes / 2**20:.0f} MiB | {runs[0][5]} ({runs[0][4]}) | {runs[0][6]} | {millis:.0f} ms | {millis / gib:.0f} ms |")
PY
