#!/usr/bin/env bash
# Gateway mode against Varnish, both in front of the same origin
# simulator, one core each, in one run:
#  1. hits: the closed-loop rate and the server CPU per request of GETs of
#     1,000 cached paths (bench/scenarios/gateway-hits.toml);
#  2. p99 of the same GETs at a fixed 20,000/s (gateway-p99.toml);
#  3. stampede: one path expiring every second from a 50 ms origin at
#     10,000/s (gateway-stampede.toml); the origin's request count per
#     second of the run and the clients' p99.
# ROUNDS rounds alternate the two servers; bench/gateway.py prints medians.
#
# Servers run on SERVER_CPU, the generator and the origin on CLIENT_CPU.
#   bench/gateway.sh            # about 6 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-3}

if ! command -v varnishd >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq varnish >/dev/null
fi
service varnish stop >/dev/null 2>&1 || true
cargo build --release -q -p shardgate -p shardgate-bench
bench=target/release/shardgate-bench
out="bench/results/$(date -u +%F)-gateway"
mkdir -p "$out"
work=$(mktemp -d /tmp/shardgate-gateway.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; pkill -f "varnishd -n $work" 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() {
    for _ in $(seq 400); do curl -sf -o /dev/null "http://$1$2" && return; sleep 0.05; done
    echo "http://$1$2 never answered" >&2
    exit 1
}

# start_origin PORT CACHE_CONTROL LATENCY
start_origin() {
    taskset -c "$CLIENT_CPU" $bench origin --listen "127.0.0.1:$1" --cache-control "$2" --latency "$3" --body-bytes 256 \
        >/dev/null 2>&1 &
    pids+=($!)
    wait_ready "127.0.0.1:$1" /_origin/stats
}

# start SERVER ORIGIN_PORT: prints "PIDS ADDRESS" of a server pinned to SERVER_CPU.
start() {
    local port
    port=$(free_port)
    case $1 in
    shardgate)
        rm -rf "$work/data"
        taskset -c "$SERVER_CPU" target/release/shardgate --listen "127.0.0.1:$port" --shards 1 --rate-limit off \
            --data-dir "$work/data" --origin "http://127.0.0.1:$2" >"$work/shardgate.log" 2>&1 &
        local pid=$!
        wait_ready "127.0.0.1:$port" /readyz
        echo "$pid 127.0.0.1:$port"
        ;;
    varnish)
        rm -rf "$work/varnish"
        # One thread pool on one CPU; the malloc store holds the whole set.
        taskset -c "$SERVER_CPU" varnishd -n "$work/varnish" -a "127.0.0.1:$port" -b "127.0.0.1:$2" \
            -s malloc,256m -p thread_pools=1 -F >"$work/varnish.log" 2>&1 &
        local pid=$!
        wait_ready "127.0.0.1:$port" /warm
        local children
        children=$(pgrep -d, -P "$pid" || true)
        echo "$pid${children:+,$children} 127.0.0.1:$port"
        ;;
    esac
}

stop() { IFS=, read -ra list <<<"$1"; kill "${list[@]}" 2>/dev/null || true; sleep 1; }

run() { # run SCENARIO SERVER ROUND PIDS ADDR
    taskset -c "$CLIENT_CPU" $bench run "bench/scenarios/$1.toml" --addr "$5" --api gateway --server-name "$2-r$3" \
        --server-pid "$4" --out-dir "$out" >/dev/null
}

# hit_ratio SERVER ADDR: the share of cache lookups that were hits, as the
# server itself counts them (shardgate's X-Cache counters, varnishstat).
hit_ratio() {
    case $1 in
    shardgate)
        curl -s "http://$2/metrics" | awk '/^shardgate_gateway_responses_total/ {
            split($0, a, "x_cache=\""); split(a[2], b, "\""); count[b[1]] += $NF; total += $NF }
            END { if (total) printf "%.4f\n", count["HIT"] / total; else print "nan" }'
        ;;
    varnish)
        varnishstat -n "$work/varnish" -1 -f MAIN.cache_hit -f MAIN.cache_miss | awk '
            /cache_hit/ {h=$2} /cache_miss/ {m=$2} END {if (h+m) printf "%.4f\n", h/(h+m); else print "nan"}'
        ;;
    esac
}

origin_stats() { curl -s "http://127.0.0.1:$1/_origin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }

hot=$(free_port)
start_origin "$hot" "max-age=3600" 0ms
stampede=$(free_port)
start_origin "$stampede" "max-age=1, stale-while-revalidate=30" 50ms

: >"$out/stampede-origin.txt"
: >"$out/hit-ratio.txt"
for round in $(seq "$ROUNDS"); do
    for server in shardgate varnish; do
        echo "== round $round: $server" >&2
        read -r server_pids addr < <(start "$server" "$hot")
        run gateway-hits "$server" "$round" "$server_pids" "$addr"
        run gateway-p99 "$server" "$round" "$server_pids" "$addr"
        echo "$server $round $(hit_ratio "$server" "$addr")" >>"$out/hit-ratio.txt"
        stop "$server_pids"
        read -r server_pids addr < <(start "$server" "$stampede")
        before=$(origin_stats "$stampede")
        run gateway-stampede "$server" "$round" "$server_pids" "$addr"
        after=$(origin_stats "$stampede")
        echo "$server $round $((after - before))" >>"$out/stampede-origin.txt"
        stop "$server_pids"
    done
done
python3 bench/gateway.py "$out" | tee "$out/summary.md"
