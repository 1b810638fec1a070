#!/usr/bin/env bash
# Starts one server on loopback, pinned to a CPU, and leaves it running.
# Prints one line: "PIDS ADDRESS API" (PIDS comma-separated: every process
# whose CPU time counts as the server's).
#
# Usage: bench/peers/start.sh shardgate|nginx|webdis CPU
#   shardgate  target/release/shardgate --shards 1 (build it first)
#   nginx      nginx `return 200` with a 64-byte body (bench/peers/nginx.conf)
#   webdis     webdis (bench/peers/webdis.json) in front of redis-server,
#              both on CPU, persistence off
# Missing packages are installed with apt-get.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$(dirname "$here")")
server=$1
cpu=$2
work=$(mktemp -d /tmp/shardgate-bench-peer.XXXXXX)

need() {
    command -v "$1" >/dev/null && return
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    # Debian starts installed services; the benchmark runs its own.
    service "$3" stop >/dev/null 2>&1 || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.1)" 2>/dev/null && return
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    exit 1
}

case $server in
shardgate)
    binary="$root/target/release/shardgate"
    [ -x "$binary" ] || { echo "build first: cargo build --release" >&2; exit 1; }
    taskset -c "$cpu" "$binary" --listen 127.0.0.1:0 --shards 1 --rate-limit off --data-dir "$work/data" >"$work/out" 2>"$work/err" &
    pid=$!
    for _ in $(seq 200); do grep -q '^listening on ' "$work/out" && break; sleep 0.05; done
    addr=$(sed -n 's/^listening on //p' "$work/out")
    # The port opens before the log is recovered: wait until /readyz says 200.
    for _ in $(seq 200); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.05; done
    echo "$pid $addr shardgate"
    ;;
nginx)
    need nginx nginx-light nginx
    port=$(free_port)
    sed "s/__PORT__/$port/" "$here/nginx.conf" >"$work/nginx.conf"
    taskset -c "$cpu" nginx -c "$work/nginx.conf" -p "$work" >"$work/err" 2>&1 &
    pid=$!
    wait_port "$port"
    echo "$pid 127.0.0.1:$port static"
    ;;
webdis)
    need redis-server redis-server redis-server
    need webdis webdis webdis
    redis_port=$(free_port)
    http_port=$(free_port)
    taskset -c "$cpu" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    redis=$!
    wait_port "$redis_port"
    sed "s/__REDIS_PORT__/$redis_port/; s/__HTTP_PORT__/$http_port/" "$here/webdis.json" >"$work/webdis.json"
    taskset -c "$cpu" webdis "$work/webdis.json" >"$work/webdis.out" 2>&1 &
    webdis=$!
    wait_port "$http_port"
    echo "$webdis,$redis 127.0.0.1:$http_port webdis"
    ;;
*)
    echo "usage: $0 shardgate|nginx|webdis CPU" >&2
    exit 2
    ;;
esac
