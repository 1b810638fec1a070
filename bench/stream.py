#!/usr/bin/env python3
"""A 1 GiB object streamed through a gateway: throughput and the gateway's
memory, for shardgate (larger than --cache-object-max: passed through,
1 MiB buffered ahead of its reader), nginx (`proxy_pass`, buffering on:
nginx's defaults spill to a temp file) and Varnish (`pass` for objects
over 16 MiB, streaming).

The origin is nginx serving a 1 GiB file (sendfile) with `Cache-Control:
max-age=60`, on CLIENT_CPU with the client; each gateway runs on
SERVER_CPU. Two clients per round: a fast one (curl to /dev/null) for
throughput, and a slow one (curl --limit-rate 64M, 16 s) for memory: the
peak RSS of the gateway's processes above what it held before the
request, sampled every 20 ms, and what they wrote to disk meanwhile
(/proc/PID/io: nginx buffers a slow client's body in a temp file).
Servers alternate within each round.

Usage: python3 bench/stream.py [--rounds 3] [--out FILE]
Needs: nginx, varnish, curl (apt-get install nginx-light varnish curl),
a release build.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk"))
import compare  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
OBJECT_BYTES = 1 << 30
SLOW_RATE = "64M"

ORIGIN_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/origin.pid;
error_log {dir}/origin-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {dir};
        location / {{ add_header Cache-Control "max-age=60"; }}
    }}
}}
"""

PROXY_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    proxy_temp_path {dir}/proxy-temp;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""

VCL = """vcl 4.1;
import std;
backend default {{ .host = "127.0.0.1"; .port = "{origin}"; }}
sub vcl_backend_response {{
    if (std.integer(beresp.http.Content-Length, 0) > 16777216) {{
        set beresp.uncacheable = true;
        set beresp.ttl = 10s;
        return (deliver);
    }}
}}
"""


def start_nginx(conf_text, work, name):
    port = compare.free_port()
    path = os.path.join(work, f"{name}.conf")
    open(path, "w").write(conf_text(port))
    cpu = CLIENT_CPU if name == "origin" else SERVER_CPU
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-c", path, "-p", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_port(port)
    return proc, port


def pids_of(proc):
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [proc.pid, *map(int, children)]


def rss(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def written(pids):
    """Bytes the processes caused to be written to storage (/proc/PID/io)."""
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/io"):
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fetch(url, rate=None):
    """Downloads to /dev/null; returns (bytes, seconds)."""
    args = ["taskset", "-c", str(CLIENT_CPU), "curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    if rate:
        args += ["--limit-rate", rate]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def measure(url, pids):
    fast_bytes, fast_s = fetch(url)
    assert fast_bytes == OBJECT_BYTES, f"{url}: {fast_bytes} bytes"
    before = rss(pids)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(pids))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    disk_before = written(pids)
    sampler.start()
    slow_bytes, slow_s = fetch(url, SLOW_RATE)
    done.set()
    sampler.join()
    assert slow_bytes == OBJECT_BYTES
    return {"mib_per_s": OBJECT_BYTES / fast_s / 2**20, "rss_growth_mib": (peak[0] - before) / 2**20,
            "slow_s": slow_s, "disk_mib": (written(pids) - disk_before) / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="shardgate-stream-")
    with open(os.path.join(work, "big"), "wb") as f:
        f.truncate(OBJECT_BYTES)  # Sparse: reads cost no disk.
    procs = []
    try:
        origin, origin_port = start_nginx(lambda p: ORIGIN_CONF.format(dir=work, port=p), work, "origin")
        procs.append(origin)
        # Once straight from the origin: the file's pages are in the page
        # cache before the first gateway is timed (it alone paid for it).
        fetch(f"http://127.0.0.1:{origin_port}/big")
        sg, base = compare.start_shardgate(SERVER_CPU, "uring", extra=["--origin", f"http://127.0.0.1:{origin_port}"])
        procs.append(sg)
        proxy, proxy_port = start_nginx(lambda p: PROXY_CONF.format(dir=work, port=p, origin=origin_port), work, "proxy")
        procs.append(proxy)
        vcl = os.path.join(work, "stream.vcl")
        open(vcl, "w").write(VCL.format(origin=origin_port))
        varnish_port = compare.free_port()
        varnish = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), "varnishd", "-j", "none", "-n",
                                    os.path.join(work, "varnish"), "-a", f"127.0.0.1:{varnish_port}", "-f", vcl,
                                    "-s", "malloc,256m", "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(varnish)
        compare.wait_port(varnish_port)
        time.sleep(0.5)
        servers = {
            "shardgate": (f"{base}/big", [sg.pid]),
            "nginx proxy_pass": (f"http://127.0.0.1:{proxy_port}/big", pids_of(proxy)),
            "varnish pass": (f"http://127.0.0.1:{varnish_port}/big", pids_of(varnish)),
        }
        results = {name: [] for name in servers}
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:  # servers alternate round by round
                url, pids = servers[name]
                r = measure(url, pids)
                results[name].append(r)
                print(f"round {round_number + 1} {name:18} {r['mib_per_s']:8.0f} MiB/s  RSS +{r['rss_growth_mib']:.1f} MiB "
                      f"disk {r['disk_mib']:.0f} MiB (slow client, {r['slow_s']:.1f} s)", flush=True)
    finally:
        compare.stop(procs)
    lines = [
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; gateways on CPU {SERVER_CPU}, origin "
        f"(nginx, sendfile) and curl on CPU {CLIENT_CPU}; a 1 GiB object, {args.rounds} rounds, medians.",
        "",
        "| gateway | throughput to a fast client | RSS growth while a client reads at 64 MB/s | written to disk meanwhile |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        speed = statistics.median(r["mib_per_s"] for r in runs)
        growth = statistics.median(r["rss_growth_mib"] for r in runs)
        disk = statistics.median(r["disk_mib"] for r in runs)
        lines.append(f"| {name} | {speed:,.0f} MiB/s | {growth:.1f} MiB | {disk:,.0f} MiB |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        open(args.out, "w").write(table + "\n")


if __name__ == "__main__":
    main()
