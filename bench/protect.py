#!/usr/bin/env python3
"""`make bench`, second part: protecting the origin (issue 12). Two cases, each on the same
traffic through several setups started side by side:

- herd: N clients at once for one uncached resource (a streamed response of ~1 s, and a
  20 ms one), half through each of two proxies: origin fetches, and each client's time to
  first byte and to the end. Setups: fleet-cache (two proxies, one Redis), the same without
  collapsing (`collapse.max_wait_ms` 0), Envoy's built-in cache (one per proxy) and plain
  proxying.
- mixed: wrk on two proxies at once, keys of Zipf-like popularity, one in ten not storable,
  the others fresh for 5 s: origin requests and req/s per setup.

Origin requests are counted from the slow origin's own log (one line per request). Uses
bench.py's processes and configs; results in bench/results/<timestamp>-protect.md and
latest-protect.md. Knobs: PROTECT_HERD (20 clients), PROTECT_REPS (3), PROTECT_MIXED_S (10).
"""

import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

HERD = int(os.environ.get("PROTECT_HERD", "20"))
REPS = int(os.environ.get("PROTECT_REPS", "3"))
MIXED_S = int(os.environ.get("PROTECT_MIXED_S", "10"))
MIXED_LUA = os.path.join(B.ROOT, "bench", "mixed.lua")

# Two proxies per setup (a plain proxy is one: nothing to share).
B.ENVOY_PORTS.update({
    "fc-a": (23210, 23211), "fc-b": (23220, 23221),
    "nc-a": (23230, 23231), "nc-b": (23240, 23241),
    "bi-a": (23250, 23251), "bi-b": (23260, 23261),
    "plain": (23270, 23271),
})
# The service name every client asks for, whichever proxy it reaches.
FLEET_HOST = "app.bench"
FLEET = dict(B.PLUGIN_REDIS, namespace="bench-protect")
NO_COLLAPSE = dict(B.PLUGIN_REDIS, namespace="bench-nocollapse",
                   collapse={"max_wait_ms": 0}, hit_for_miss_s=0)
SETUPS = [
    ("fleet-cache (2 proxies, 1 Redis)", ["fc-a", "fc-b"]),
    ("fleet-cache, collapsing off", ["nc-a", "nc-b"]),
    ("Envoy built-in cache (per proxy)", ["bi-a", "bi-b"]),
    ("plain proxying", ["plain"]),
]


def start_setups():
    cfgs = {
        "fc-a": B.ours_yaml("fc-a", FLEET), "fc-b": B.ours_yaml("fc-b", FLEET),
        "nc-a": B.ours_yaml("nc-a", NO_COLLAPSE), "nc-b": B.ours_yaml("nc-b", NO_COLLAPSE),
        "bi-a": B.envoy_yaml("bi-a", B.BUILTIN_CACHE, B.ORIGIN_ROUTE),
        "bi-b": B.envoy_yaml("bi-b", B.BUILTIN_CACHE, B.ORIGIN_ROUTE),
        "plain": B.envoy_yaml("plain", "", B.ORIGIN_ROUTE),
    }
    for name, yaml in cfgs.items():
        B.start_envoy(name, yaml)
    for name in cfgs:
        if not B.envoy_ready(name):
            raise SystemExit(f"protect: Envoy '{name}' not ready: {B.envoy_log_tail(name)}")


def origin_requests(marker):
    """Requests the slow origin logged whose target contains `marker`."""
    try:
        with open(os.path.join(B.RUN, "slow_origin.log"), errors="replace") as f:
            return sum(1 for line in f if line.startswith("origin: ") and marker in line)
    except OSError:
        return 0


def one_get(port, path, barrier, out, i):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    barrier.wait()
    t0 = time.perf_counter()
    try:
        # One Host for every proxy, as in a fleet behind one service name (the key includes it).
        conn.request("GET", path, headers={"Host": FLEET_HOST})
        r = conn.getresponse()
        first = r.read(1)
        t1 = time.perf_counter()
        rest = r.read()
        t2 = time.perf_counter()
        out[i] = (r.status, first + rest, t1 - t0, t2 - t0, r.getheader("cache-status") or "")
    except OSError as e:
        out[i] = (None, b"", None, None, str(e))
    finally:
        conn.close()


def herd(names, path):
    """HERD clients at once, client i through proxy names[i % len]."""
    out = [None] * HERD
    barrier = threading.Barrier(HERD)
    threads = [threading.Thread(target=one_get,
                                args=(B.ENVOY_PORTS[names[i % len(names)]][0], path, barrier, out, i))
               for i in range(HERD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x):
    return "n/a" if x is None else f"{x * 1000:.0f}"


def herd_case(run):
    resources = [
        ("stream, 5 chunks 200 ms apart", "chunks=5&pause_ms=200&size=500&cc=max-age%3D60"),
        ("20 ms response", f"size=1024&delay_ms=20&cc=max-age%3D60"),
    ]
    rows = []
    for rlabel, query in resources:
        for slabel, names in SETUPS:
            fetches, ttfb50, ttfbmax, end50, endmax, wrong = [], [], [], [], [], 0
            for rep in range(REPS):
                marker = f"/h-{run}-{names[0]}-{len(rows)}-{rep}?"
                path = f"/slow{marker}{query}"
                out = herd(names, path)
                bodies = {o[1] for o in out if o[0] == 200}
                wrong += sum(1 for o in out if o[0] != 200) + (len(bodies) - 1 if bodies else 0)
                time.sleep(0.3)  # the origin logs after answering
                fetches.append(origin_requests(marker))
                ttfb = [o[2] for o in out]
                end = [o[3] for o in out]
                ttfb50.append(pct(ttfb, 50))
                ttfbmax.append(pct(ttfb, 100))
                end50.append(pct(end, 50))
                endmax.append(pct(end, 100))
            med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
            rows.append((rlabel, slabel, statistics.median(fetches), min(fetches), max(fetches),
                         med(ttfb50), med(ttfbmax), med(end50), med(endmax), wrong))
            B.log(f"herd {rlabel} / {slabel}: origin fetches {fetches}, "
                  f"first byte p50 {ms(med(ttfb50))} ms max {ms(med(ttfbmax))} ms")
    return rows


def counters(names, which):
    """The sum over the setup's proxies of each fleet-cache counter in `which`."""
    out = dict.fromkeys(which, 0)
    for name in names:
        for stat, v in B.envoy_stats(name).items():
            # Envoy prefixes a Wasm metric's name (`wasmcustom.fleet_cache_lookups`).
            c = stat.rsplit(".", 1)[-1]
            if c in out:
                out[c] += v
    return out


MIXED_COUNTERS = ("fleet_cache_lookups", "fleet_cache_hit_for_miss", "fleet_cache_collapsed")


def mixed_case(run):
    rows = []
    for slabel, names in SETUPS:
        prefix = f"/slow/m-{run}-{names[0]}"
        before = counters(names, MIXED_COUNTERS)
        procs = []
        for i, name in enumerate(names):
            url = f"http://127.0.0.1:{B.ENVOY_PORTS[name][0]}"
            argv = ["wrk", "-t1", f"-c{max(1, B.CONNS // len(names))}", f"-d{MIXED_S}s", "--timeout", "5s",
                    "-H", f"Host: {FLEET_HOST}",
                    "-s", MIXED_LUA, url, "--", prefix, "200", str(i + 1), "5"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=MIXED_S + 60)[0] for p in procs]
        parsed = [B.parse_wrk(o) for o in outs]
        rps = sum(p.get("rps") or 0 for p in parsed)
        requests = sum(p.get("requests") or 0 for p in parsed)
        errors = sum(p.get("non2xx", 0) + p.get("sock_errors", 0) for p in parsed)
        time.sleep(0.5)
        fetched = origin_requests(f"/m-{run}-{names[0]}/")
        after = counters(names, MIXED_COUNTERS)
        delta = {c: after[c] - before[c] for c in MIXED_COUNTERS}
        rows.append((slabel, rps, requests, fetched, errors, delta))
        B.log(f"mixed {slabel}: {rps:.0f} req/s, {requests} requests, {fetched} reached the origin")
    return rows


def report(herd_rows, mixed_rows, info, load):
    out = [f"# Protecting the origin: herd and mixed traffic ({datetime.datetime.now():%Y-%m-%d %H:%M})", ""]
    out.append(f"Machine: {info.get('nproc')} cores, {info.get('cpu', '')}; load before {' '.join(load)}. "
               f"One run, setups side by side, each its own Envoy(s) with `--concurrency 2`, one Redis "
               f"and Webdis, the slow origin (demo_origin) behind nginx.")
    out.append("")
    out.append(f"## Herd: {HERD} clients at once for one uncached resource, half through each proxy "
               f"(median of {REPS} runs; each run a new key)")
    out.append("")
    out.append("| resource | setup | origin fetches (min-max) | first byte p50 / max (ms) | whole response p50 / max (ms) | wrong or failed |")
    out.append("|---|---|---:|---:|---:|---:|")
    for r in herd_rows:
        out.append(f"| {r[0]} | {r[1]} | {r[2]:g} ({r[3]}-{r[4]}) | {ms(r[5])} / {ms(r[6])} | "
                   f"{ms(r[7])} / {ms(r[8])} | {r[9]} |")
    out.append("")
    out.append(f"## Mixed: wrk on every proxy of the setup for {MIXED_S} s, {B.CONNS} connections in "
               f"all, 200 keys of Zipf-like popularity, one in ten `private`, the others `max-age=5`")
    out.append("")
    out.append("| setup | req/s | requests | reached the origin | share of requests | store lookups / request | lookups skipped (hit-for-miss) | non-2xx / errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s, rps, n, fetched, errors, d in mixed_rows:
        share = f"{fetched / n:.1%}" if n else "n/a"
        lookups = d["fleet_cache_lookups"]
        per = f"{lookups / n:.2f}" if n and lookups else "n/a"
        skipped = f"{d['fleet_cache_hit_for_miss']:,}" if lookups else "n/a"
        out.append(f"| {s} | {rps:,.0f} | {n:,} | {fetched:,} | {share} | {per} | {skipped} | {errors} |")
    out.append("")
    return "\n".join(out)


def main():
    info, load = B.begin_part()
    start_setups()
    run = datetime.datetime.now().strftime("%H%M%S")
    herd_rows = herd_case(run)
    mixed_rows = mixed_case(run)
    text = report(herd_rows, mixed_rows, info, load)
    B.save_part("protect", text)


if __name__ == "__main__":
    B.run_part("protect", main)
