#!/usr/bin/env bash
# The standard table: every scenario against shardgate, webdis + redis-server
# and nginx `return 200`, one server core each, in one run.
#
# Servers run on SERVER_CPU, the generator (one thread) on CLIENT_CPU. Writes
# bench/results/<date>-standard.md (the table, the machine, the command) and,
# beside it, a folder with each run's JSON and SVG.
#
#   bench/run.sh                                # everything (about 25 minutes)
#   SCENARIOS="peak-20x" SERVERS="shardgate" bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SCENARIOS=${SCENARIOS:-"steady-100m burst-8x burst-20x peak-20x max-sustainable write-heavy read-mostly"}
SERVERS=${SERVERS:-"shardgate webdis nginx"}
PRICE=${CORE_HOUR_PRICE:-0.044625}

command -v wrk >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p shardgate -p shardgate-bench
name="$(date -u +%F)-standard"
out="bench/results/$name"
mkdir -p "$out"
bench=target/release/shardgate-bench
files=()
ceiling=""

stop() { IFS=, read -ra list <<<"$1"; kill "${list[@]}" 2>/dev/null || true; sleep 0.5; }

for server in $SERVERS; do
    read -r pids addr api < <(bench/peers/start.sh "$server" "$SERVER_CPU")
    for scenario in $SCENARIOS; do
        echo "== $scenario on $server" >&2
        if taskset -c "$CLIENT_CPU" $bench run "bench/scenarios/$scenario.toml" --addr "$addr" --api "$api" \
            --server-name "$server" --server-pid "$pids" --core-hour-price "$PRICE" --out-dir "$out" >/dev/null; then
            files+=("$out/$scenario-$server.json")
        else
            echo "!! $scenario on $server failed" >&2
        fi
    done
    if [ "$server" = nginx ]; then
        # The generator's own ceiling next to wrk's, against the same nginx.
        taskset -c "$CLIENT_CPU" $bench run bench/scenarios/ceiling.toml --addr "$addr" --api static \
            --server-name nginx --server-pid "$pids" --out-dir "$out" >/dev/null
        wrk_rps=$(taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d10s "http://$addr/" | sed -n 's/^Requests\/sec: *//p')
        ours=$($bench table "$out/ceiling-nginx.json" | tail -1 | cut -d'|' -f5 | tr -d ' ')
        ceiling="Generator ceiling against nginx \`return 200\` (closed loop, 64 connections, one thread on one core): shardgate-bench ${ours} requests/s; \`wrk -t1 -c64\` ${wrk_rps} requests/s in the same run."
    fi
    stop "$pids"
done

{
    echo "# Standard table, $name"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r)."
    echo "Servers pinned to CPU $SERVER_CPU, shardgate-bench (one thread) to CPU $CLIENT_CPU; shardgate runs \`--shards 1\`."
    echo "Command: \`bench/run.sh\` (SCENARIOS=\"$SCENARIOS\", SERVERS=\"$SERVERS\"). Price: \$$PRICE per vCPU-hour."
    echo
    $bench table "${files[@]}"
    echo
    [ -n "$ceiling" ] && echo "$ceiling" && echo
    echo "Per-second charts and raw JSON: [\`$name/\`]($name/)."
} >"$out.md"
echo "wrote $out.md" >&2
