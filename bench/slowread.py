#!/usr/bin/env python3
"""Slow readers: server memory and health while many clients never read.

Starts shardgate (and, with --baseline, another build in the same run),
stores one 1 MiB value, then opens CONNECTIONS connections that each
pipeline PIPELINE GETs of it and never read a byte (slowhttptest's slow-read
mode taken to the limit: a zero window). After SETTLE seconds it reads the
server's resident memory (VmRSS, /proc/PID/status) and times /healthz on a
fresh connection. The target: RSS growth under 128 MiB, /healthz within
10 ms, with 2,000 such connections.

Usage: python3 bench/slowread.py [--connections 2000] [--pipeline 8] [--settle 5]
                                 [--rounds 3] [--baseline OLD_BINARY] [--out FILE]
Needs a release build (cargo build --release); runs as a user allowed to
raise its open-file limit (root here).
"""
import argparse
import datetime
import os
import resource
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "wrk"))
import compare  # noqa: E402

BIN = compare.BIN
VALUE_BYTES = 1 << 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(binary, cpu):
    proc, base = compare.start_shardgate(cpu, "auto", binary=binary,
                                         extra=["--max-connections", "100000", "--max-body", "4MiB"])
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return proc, (host, int(port))


def request(addr, raw, timeout=5.0):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += s.recv(65536)
        return int(head.split()[1])


def healthz_ms(addr, samples=20):
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        assert request(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") == 200
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    return statistics.median(times), max(times)


def measure(binary, label, args):
    proc, addr = start(binary, args.server_cpu)
    try:
        value = b"v" * VALUE_BYTES
        put = b"PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(value) + value
        assert request(addr, put) in (200, 201)
        assert request(addr, b"GET /v1/kv/big HTTP/1.1\r\nHost: t\r\n\r\n") == 200
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        batch = b"GET /v1/kv/big HTTP/1.1\r\nHost: t\r\n\r\n" * args.pipeline
        slow = []
        for _ in range(args.connections):
            s = socket.socket()
            # A tiny receive window: the client's kernel absorbs next to nothing.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(addr)
            s.sendall(batch)
            slow.append(s)
        time.sleep(args.settle)
        after = rss_kib(proc.pid)
        median_ms, max_ms = healthz_ms(addr)
        peak = after
        for s in slow:
            s.close()
        return {"label": label, "before_mib": before / 1024, "after_mib": peak / 1024,
                "growth_mib": (peak - before) / 1024, "healthz_median_ms": median_ms, "healthz_max_ms": max_ms}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--pipeline", type=int, default=8)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--baseline", help="another shardgate binary, measured in the same rounds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the servers alternating within each")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    want = 2 * args.connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    builds = [("shardgate", BIN)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs = {label: [] for label, _ in builds}
    for _ in range(args.rounds):
        for label, binary in builds:
            runs[label].append(measure(binary, label, args))
    rows = []
    for label, results in runs.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "label"}
        median["label"] = label
        median["rounds"] = ", ".join(f"{r['growth_mib']:.0f}" for r in results)
        median["healthz_rounds"] = ", ".join(f"{r['healthz_max_ms']:.2f}" for r in results)
        rows.append(median)
    lines = [
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on `{socket.gethostname()}` "
        f"({os.cpu_count()} CPUs, {os.uname().release}); server on CPU {args.server_cpu}, `--shards 1`; "
        f"{args.connections} connections each pipelining {args.pipeline} GETs of a 1 MiB value and never reading; "
        f"RSS read {args.settle:.0f} s after the last connection; /healthz timed 20 times on fresh connections; "
        f"{args.rounds} rounds, the servers alternating, medians (per-round values in the last two columns).",
        "",
        "| server | RSS before | RSS with the slow readers | growth | /healthz median | /healthz max | growth per round (MiB) | /healthz max per round (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['before_mib']:.0f} MiB | {r['after_mib']:.0f} MiB | {r['growth_mib']:.0f} MiB "
                     f"| {r['healthz_median_ms']:.2f} ms | {r['healthz_max_ms']:.2f} ms | {r['rounds']} | {r['healthz_rounds']} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
