#!/usr/bin/env python3
"""fdatasync latency of the disk under a directory: append BLOCK bytes,
fdatasync, N times; prints the median and p99 in microseconds.

Usage: python3 bench/disk.py [DIR] [--block 4096] [--count 2000]
"""
import argparse
import os
import statistics
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("dir", nargs="?", default=".")
parser.add_argument("--block", type=int, default=4096)
parser.add_argument("--count", type=int, default=2000)
args = parser.parse_args()
block = os.urandom(args.block)
latencies = []
with tempfile.NamedTemporaryFile(dir=args.dir) as f:
    for _ in range(args.count):
        f.write(block)
        f.flush()
        started = time.perf_counter()
        os.fdatasync(f.fileno())
        latencies.append((time.perf_counter() - started) * 1e6)
latencies.sort()
p99 = latencies[int(len(latencies) * 0.99)]
print(f"fdatasync after a {args.block}-byte append: median {statistics.median(latencies):.0f} µs, "
      f"p99 {p99:.0f} µs ({args.count} samples)")
