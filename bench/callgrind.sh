#!/usr/bin/env bash
# Instructions per request under callgrind: a gateway hit of a 64-byte
# origin response and a GET of a stored 64-byte value, for one or more
# shardgate binaries. Each figure is the difference between a run of
# 12,000 and one of 2,000 sequential requests on one keep-alive
# connection, divided by 10,000, so start-up and the first miss cancel
# out. Instruction counts do not drift with the host's speed phases, so
# two builds compare to within a fraction of a percent where CPU time
# needs paired rounds (bench/README.md, "How to read the figures").
#
# Usage: bench/callgrind.sh [BINARY...]   (default: target/release/shardgate)
# Needs: valgrind (apt-get install valgrind), curl, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
[ -x target/release/shardgate-bench ] || { echo "build first: cargo build --release" >&2; exit 1; }
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/shardgate)

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port)
target/release/shardgate-bench origin --listen "127.0.0.1:$origin_port" --cache-control max-age=86400 \
  --body-bytes 64 >/dev/null 2>&1 &
origin=$!
trap 'kill $origin 2>/dev/null; rm -rf "$work"' EXIT

# count BINARY N MODE: total instructions of a run serving N requests.
count() {
  local binary=$1 n=$2 mode=$3 port data out
  port=$(free_port)
  data=$(mktemp -d -p "$work")
  out="$work/callgrind.$n.out"
  local extra=()
  [ "$mode" = gateway ] && extra=(--origin "http://127.0.0.1:$origin_port")
  valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" --listen "127.0.0.1:$port" --shards 1 \
    --io-driver epoll --rate-limit off --data-dir "$data" "${extra[@]}" >/dev/null 2>"$work/valgrind.err" &
  local pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  local path=/item/1
  if [ "$mode" = gateway ]; then
    curl -sf "http://127.0.0.1:$port$path" >/dev/null
  else
    path=/v1/kv/k
    curl -sf -X PUT --data-binary "$(head -c 64 /dev/zero | tr '\0' x)" "http://127.0.0.1:$port$path" >/dev/null
  fi
  python3 - "$port" "$n" "$path" <<'PY'
import socket, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(request)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode().lower().split("\r\n")
            length = int(next(l.split(":")[1] for l in head if l.startswith("content-length")))
            if not head[0].startswith("http/1.1 200"):
                sys.exit(f"unexpected answer: {head[0]}")
            if len(buf) >= end + 4 + length:
                buf = buf[end + 4 + length:]
                break
        buf += s.recv(65536)
PY
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

for binary in "${binaries[@]}"; do
  for mode in gateway kv; do
    a=$(count "$binary" 2000 "$mode")
    b=$(count "$binary" 12000 "$mode")
    echo "$binary $mode: $(((b - a) / 10000)) instructions per request"
  done
done
