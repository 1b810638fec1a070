#!/usr/bin/env bash
# A 3-node shardgate cluster on loopback, for a first look (docs/spec.md §8):
#
#   HAProxy :8080  ->  shardgate n1 :8081, n2 :8082, n3 :8083  ->  origin :9000
#   Redis :6390 (global rate limits), NATS JetStream :4232 (writes, statuses, purges)
#
# The origin is the bench's simulator unless ORIGIN=http://HOST:PORT names
# yours. Data goes to a temporary directory (WORK=DIR to keep it). Ctrl-C
# stops everything. Needs: haproxy, redis-server, nats-server (Debian:
# apt-get install haproxy redis-server nats-server) and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in haproxy redis-server nats-server; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install haproxy redis-server nats-server" >&2; exit 1; }
done
[ -x target/release/shardgate ] || cargo build --release
work=${WORK:-$(mktemp -d -t shardgate-cluster-XXXX)}
mkdir -p "$work"
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped; data in $work"
}
trap stop EXIT
trap 'exit 130' INT TERM

redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
nats-server -a 127.0.0.1 -p 4232 -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
origin=${ORIGIN:-}
if [ -z "$origin" ]; then
  target/release/shardgate-bench origin --listen 127.0.0.1:9000 \
    --cache-control 'max-age=60, stale-while-revalidate=30' --header 'Surrogate-Key: {path}' >"$work/origin.log" 2>&1 &
  pids+=($!)
  origin=http://127.0.0.1:9000
fi
for n in 1 2 3; do
  target/release/shardgate --listen "127.0.0.1:808$n" --shards 1 --data-dir "$work/n$n" \
    --origin "$origin" --admin-token local --trust-forwarded-for \
    --cluster-redis redis://127.0.0.1:6390 --cluster-nats nats://127.0.0.1:4232 \
    --node-id "n$n" --cluster-size 3 >"$work/n$n.log" 2>&1 &
  pids+=($!)
done
sed "s#/tmp/shardgate-haproxy.sock#$work/haproxy.sock#" deploy/cluster/haproxy.cfg >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
cat <<INFO
cluster up (logs in $work):
  curl -si localhost:8080/users/42                                  # a miss, then a hit, on the node the URL hashes to
  curl -si -X POST -H 'Prefer: respond-async' --data x localhost:8080/users/42   # a write through JetStream
  curl -s -X PURGE -H 'Authorization: Bearer local' -H 'Host: localhost:8080' localhost:8082/users/42
                                                                    # a purge sent to any node reaches the one that stores it
  curl -s localhost:8081/metrics | grep shardgate_cluster
Ctrl-C to stop.
INFO
wait
