"""Markdown for bench/overload.py's results (also: python3 bench/overload_report.py RESULTS.json)."""
import json
import statistics
import sys

CAPACITY_RPS = 16 * 1000 / 20  # the simulated origin: 16 at once, 20 ms each
WARMUP_S = 5


def classes(run):
    return {c["class"]: c for c in run["series"][0]["classes"]}


def ms(us):
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us} µs"


def origin_summary(seconds, after=WARMUP_S):
    steady = seconds[after:-1] or seconds
    peaks = [s["in_flight_max"] for s in steady]
    limits = [s["limit"] for s in steady if s["limit"] is not None]
    return {
        "peak": max(s["in_flight_max"] for s in seconds),
        "peak_steady": max(peaks),
        "median_peak": statistics.median(peaks),
        "limit": statistics.median(limits) if limits else None,
        "served_rps": statistics.median([s["requests_end"] - s["requests"] for s in steady]) if steady else 0,
    }


def gateway_rows(raw):
    lines = ["| scenario | server | offered/s | hits | origin-served | stale | 503 | other 5xx | client timeouts "
             "| hit p99 | 503 p99 | origin concurrency: peak, steady peak, median | shardgate limit | origin answered/s "
             "| CPU µs/req |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, run in raw.items():
        if "/" not in key:
            continue
        scenario, server = key.split("/")
        row = run["bench"]["rows"][0]
        c = classes(run["bench"])
        o = origin_summary(run["origin"])
        limit = "–" if o["limit"] is None else f"{o['limit']:.0f}"
        cpu = "–" if row["cpu_us_per_request"] is None else f"{row['cpu_us_per_request']:.1f}"
        lines.append(
            f"| {scenario} | {server} | {row['offered_rps']:.0f} | {c['hit']['count']} | {c['miss']['count']} "
            f"| {c['stale']['count']} | {c['rejected']['count']} | {c['failed']['count']} | {row['failures']} "
            f"| {ms(c['hit']['p99_us'])} | {ms(c['rejected']['p99_us'])} "
            f"| {o['peak']}, {o['peak_steady']}, {o['median_peak']:.0f} | {limit} | {o['served_rps']:.0f} "
            f"| {cpu} |")
    return lines


def ratios(raw):
    """Hit p99 under overload over hit p99 without, within each round (the
    two alternate against one server), and the median of the rounds."""
    lines = ["| server | hit p99 normal → overload, per round | ratios | median ratio "
             "| origin answered/s under overload ÷ capacity (800/s), median | client timeouts |",
             "|---|---|---|---|---|---|"]
    servers = sorted({k.split("/")[1] for k in raw if k.startswith("origin-overload/")})
    for server in servers:
        rounds = raw[f"origin-overload/{server}"].get("rounds", [])
        if not rounds:
            continue
        pairs = [(classes(r["origin-normal"]["bench"])["hit"]["p99_us"],
                  classes(r["origin-overload"]["bench"])["hit"]["p99_us"]) for r in rounds]
        each = [b / max(a, 1) for a, b in pairs]
        served = statistics.median(origin_summary(r["origin-overload"]["origin"])["served_rps"] for r in rounds)
        timeouts = sum(r[s]["bench"]["rows"][0]["failures"] for r in rounds for s in r)
        lines.append(f"| {server} | {', '.join(f'{ms(a)} → {ms(b)}' for a, b in pairs)} "
                     f"| {', '.join(f'{x:.2f}x' for x in each)} | **{statistics.median(each):.2f}x** "
                     f"| {served / CAPACITY_RPS:.2f} | {timeouts} |")
    return lines


def convergence(raw):
    """Seconds the `auto` limit took, from a fresh start (the warm-up run at
    the overload's rate), to stay within 10% of the origin's 16 (probe
    windows, at a quarter of the limit, left out), and the share of all
    overload seconds (warm-up and rounds) within 10%."""
    lines = []
    for key, run in raw.items():
        if key not in ("origin-overload/shardgate", "origin-overload/baseline"):
            continue
        warm = [s["limit"] for s in run["warmup_origin"]]
        later = [s["limit"] for r in run.get("rounds", [run]) for s in r.get("origin-overload", r)["origin"]]
        inside = lambda l: 16 * 0.9 <= l <= 16 * 1.1
        kept = [(i, l) for i, l in enumerate(warm) if l is not None and l > 16 / 2]
        settled = next((i for n, (i, _) in enumerate(kept) if all(inside(l) for _, l in kept[n:])), None)
        every = [l for l in warm + later if l is not None and l > 16 / 2]
        share = sum(inside(l) for l in every) / max(len(every), 1)
        lines.append(f"- {key}: limit per second from a fresh start {[None if l is None else int(l) for l in warm]}"
                     + (f", within 10% of 16 for good from second {settled}" if settled is not None else "")
                     + f"; within 10% of 16 in {share:.0%} of all {len(every)} overload seconds sampled "
                     f"(warm-up and rounds; a probe's second, at a quarter of the limit, left out).")
        for number, r in enumerate(run.get("rounds", []), 1):
            limits = {phase: [None if s["limit"] is None else int(s["limit"]) for s in r[phase]["origin"]]
                      for phase in ("origin-normal", "origin-overload")}
            lines.append(f"  - round {number}: normal {limits['origin-normal']} → overload "
                         f"{limits['origin-overload']}")
    return lines


def per_second(run):
    lines = ["| s | origin peak in flight | origin queue peak | shardgate limit | hits | origin-served | stale | 503 "
             "| other 5xx + timeouts |", "|---|---|---|---|---|---|---|---|---|"]
    for i, (o, s) in enumerate(zip(run["origin"], run["bench"]["series"][0]["seconds"])):
        hit, miss, stale, rejected, failed = s["classes"]
        limit = "–" if o["limit"] is None else f"{o['limit']:.0f}"
        lines.append(f"| {i} | {o['in_flight_max']} | {o['queued_max']} | {limit} | {hit} | {miss} | {stale} "
                     f"| {rejected} | {failed + max(0, s['errors'] - rejected - failed)} |")
    return lines


def disk(d):
    rows = ["| round | GET p50 / p99 / max alone | GET p50 / p99 / max during 3x PUTs | p99 ratio "
            "| generator lag p99 alone / loaded | PUTs accepted (p99) | PUTs refused with 503 (p99) "
            "| client timeouts |", "|---|---|---|---|---|---|---|---|"]
    ratios, accepted, refused, refused_p99 = [], 0, 0, []
    for i, r in enumerate(d["rounds"], 1):
        alone, loaded = r["disk-normal"], r["disk-overload"]
        a, c = classes(alone)["hit"], classes(loaded)
        b = c["hit"]
        ratio = b["p99_us"] / max(a["p99_us"], 1)
        ratios.append(ratio)
        accepted += c["miss"]["count"]
        refused += c["rejected"]["count"]
        refused_p99.append(c["rejected"]["p99_us"])
        lag = (alone["rows"][0]["generator_lag_p99_us"], loaded["rows"][0]["generator_lag_p99_us"])
        rows.append(f"| {i} | {ms(a['p50_us'])} / {ms(a['p99_us'])} / {ms(a['max_us'])} "
                    f"| {ms(b['p50_us'])} / {ms(b['p99_us'])} / {ms(b['max_us'])} | {ratio:.2f}x "
                    f"| {ms(lag[0])} / {ms(lag[1])} | {c['miss']['count']} ({ms(c['miss']['p99_us'])}) "
                    f"| {c['rejected']['count']} ({ms(c['rejected']['p99_us'])}) "
                    f"| {alone['rows'][0]['failures']} / {loaded['rows'][0]['failures']} |")
    return [
        f"Sync-PUT capacity with writes throttled to 256 KiB/s (closed loop, 256 "
        f"connections, accepted writes only): **{d['put_rate']}/s**; then {len(d['rounds'])} rounds, each "
        f"8,000 GET/s alone and 8,000 GET/s mixed with {3 * d.get('offered_put_rate', d['put_rate'])} PUT/s "
        f"(one generator, 4,096 "
        f"connections in both; GETs are the 200s, PUTs the 201s and 503s).",
        "",
        *rows,
        "",
        f"GET p99 loaded/alone, median of the rounds: **{statistics.median(ratios):.2f}x**. PUTs: {accepted} "
        f"accepted, {refused} refused with 503 (median of the rounds' p99 {ms(statistics.median(refused_p99))}); "
        f"refusals by reason: {d['disk_rejected']}.",
    ]


def markdown(raw):
    out = []
    if any(key.startswith("origin-") for key in raw):
        out += ["## Gateway scenarios", "", "origin-normal and origin-overload: the last of the rounds that "
                "alternate them (the next section has every round).", "", *gateway_rows(raw), "",
                "## Overload against normal", "", *ratios(raw), "",
                "## How fast auto settles", "", *convergence(raw), ""]
    for key in raw:
        if key.startswith("origin-brownout/") or key.startswith("origin-overload/shardgate"):
            out += [f"## Per second: {key}", "", *per_second(raw[key]), ""]
    for key in [key for key in raw if key == "disk" or key.startswith("disk/")]:
        name = "shardgate" if key == "disk" else key.removeprefix("disk/")
        out += [f"## disk-overload ({name}, kv mode, --durability sync)", "", *disk(raw[key]), ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(json.load(open(sys.argv[1]))))
