#!/usr/bin/env python3
"""`make bench-ab B=<other.wasm>`: two builds of the filter side by side in one run.

A is the build `make build` made (or A=<path>), B the other one. Each runs in its own Envoys
(one with the in-proxy tier off, so every hit reads Redis; one with it on), all at once, on
the same nginx origin, Redis and Webdis; each build keeps its entries under its own namespace
(a format change between them must not make one read the other's). The cases are measured
interleaved, A then B, then B then A (ABBA, so a drift of the machine during the run weighs
on both alike), BENCH_REPS times (default 2, so four measurements per build and case).
Tighter than comparing two whole `make bench` runs: the machine drifts between runs by more
than most changes are worth.

Reports per case each build's measurements (req/s), their medians and B/A; and the two .wasm
sizes. Results in bench/results/<timestamp>-ab.md and latest-ab.md. Knobs: BENCH_REPS,
BENCH_DURATION, BENCH_WARMUP, BENCH_THREADS, BENCH_CONNS (as bench.py), AB_CASES (a subset of
the case ids below, comma-separated).
"""

import datetime
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

AB_DIR = os.path.join(B.RUN, "ab")
B.ENVOY_PORTS.update({"ab-redis-a": (23510, 23511), "ab-redis-b": (23520, 23521),
                      "ab-memory-a": (23530, 23531), "ab-memory-b": (23540, 23541)})
# id, label, Envoy (without the build's suffix), size tag, kind (as bench.py's rows; json: a
# JSON body, which a build with compressed entries stores packed)
CASES = [
    ("4", "Redis hit", "ab-redis", "1k", "get"),
    ("4", "Redis hit", "ab-redis", "64k", "get"),
    ("4", "Redis hit", "ab-redis", "1m", "get"),
    ("5", "in-proxy hit", "ab-memory", "1k", "get"),
    ("5", "in-proxy hit", "ab-memory", "64k", "get"),
    ("5", "in-proxy hit", "ab-memory", "1m", "get"),
    ("4j", "Redis hit, JSON body", "ab-redis", "64k", "json"),
    ("4j", "Redis hit, JSON body", "ab-redis", "1m", "json"),
    ("4k", f"Redis hit, {B.KEYS_PER_THREAD * B.THREADS:,} keys", "ab-redis", "1k", "keys"),
    ("6", "miss (cache-busting)", "ab-memory", "1k", "miss"),
    ("6j", "miss (cache-busting), JSON body", "ab-memory", "64k", "miss-json"),
]
ONLY = {s.strip() for s in os.environ.get("AB_CASES", "").split(",") if s.strip()}


def builds():
    a = os.environ.get("A") or B.WASM
    b = os.environ.get("B")
    if not b:
        raise SystemExit("bench-ab: say which build to compare: make bench-ab B=<path to .wasm>")
    os.makedirs(AB_DIR, exist_ok=True)
    out = {}
    for name, src in (("a", a), ("b", b)):
        if not os.path.isfile(src):
            raise SystemExit(f"bench-ab: {src} does not exist")
        # A copy: a rebuild during the run must not change what is measured.
        dst = os.path.join(AB_DIR, f"{name}.wasm")
        shutil.copyfile(src, dst)
        out[name] = (src, dst, os.path.getsize(dst))
    return out


def start_envoys(wasm):
    for build in ("a", "b"):
        for envoy, plugin in (("ab-redis", B.PLUGIN_REDIS_ONLY), ("ab-memory", B.PLUGIN_MEMORY)):
            name = f"{envoy}-{build}"
            B.start_envoy(name, B.ours_yaml(name, dict(plugin, namespace=f"ab-{build}"),
                                            wasm[build][1]))
    for name in [n for n in B.ENVOY_PORTS if n.startswith("ab-")]:
        if not B.envoy_ready(name):
            raise SystemExit(f"bench-ab: Envoy '{name}' not ready: {B.envoy_log_tail(name)}")


def measure(case, build, rep, run_id):
    cid, _, envoy, tag, kind = case
    name = f"{envoy}-{build}"
    url = f"http://127.0.0.1:{B.ENVOY_PORTS[name][0]}"
    path = f"/j/{tag}" if kind in ("json", "miss-json") else f"/f/{tag}"
    args = None
    if kind in ("get", "json"):
        url += path
        ok, status = B.warm_ours(url)
        if not ok:
            raise SystemExit(f"bench-ab: {name} {path} never hit: {status}")
    elif kind == "keys":
        args = [f"{run_id}k{build}", path, str(B.KEYS_PER_THREAD)]
        B.wrk(url, B.WARMUP, False, args)
    else:
        args = [f"{run_id}r{rep}{build}w", path]
    B.wrk(url, B.WARMUP, False, args)
    if kind.startswith("miss"):
        args[0] = args[0][:-1] + "m"
    r = B.parse_wrk(B.wrk(url, B.DURATION, True, args))
    if r["rps"] is None or r["non2xx"] or r["sock_errors"]:
        raise SystemExit(f"bench-ab: {name} {path}: {r}")
    return r["rps"]


def report(results, wasm, info, load, reps):
    out = [f"# A/B: two builds of the filter side by side ({datetime.datetime.now():%Y-%m-%d %H:%M})", ""]
    out.append(f"A: `{wasm['a'][0]}` ({wasm['a'][2]:,} bytes). B: `{wasm['b'][0]}` "
               f"({wasm['b'][2]:,} bytes).")
    out.append("")
    out.append(f"Machine: {info.get('nproc')} cores, {info.get('cpu', '')}; load before "
               f"{' '.join(load)}. Each build in its own Envoys (`--concurrency 2`), all running at "
               f"once; cases interleaved A B, B A ({reps} rounds), wrk -t{B.THREADS} -c{B.CONNS} "
               f"{B.DURATION} s after {B.WARMUP} s of warm-up.")
    out.append("")
    out.append("| case | body | A req/s | B req/s | A median | B median | B/A |")
    out.append("|---|---|---|---|---:|---:|---:|")
    for case in [c for c in CASES if (c[0], c[3]) in results]:
        runs = results[(case[0], case[3])]
        ma, mb = statistics.median(runs["a"]), statistics.median(runs["b"])
        fmt = lambda xs: " ".join(f"{x:,.0f}" for x in xs)  # noqa: E731
        out.append(f"| {case[0]}. {case[1]} | {B.SIZE_LABEL[case[3]]} | {fmt(runs['a'])} | "
                   f"{fmt(runs['b'])} | {ma:,.0f} | {mb:,.0f} | {mb / ma:.3f} |")
    out.append("")
    out.append("Read B/A against the spread within each build's own measurements: a ratio inside "
               "it is no difference.")
    out.append("")
    return "\n".join(out)


def main():
    wasm = builds()
    info, load = B.begin_part()
    start_envoys(wasm)
    run_id = datetime.datetime.now().strftime("%H%M%S")
    cases = [c for c in CASES if not ONLY or c[0] in ONLY]
    results = {}
    for rep in range(B.REPS):
        for half, order in enumerate((("a", "b"), ("b", "a"))):
            for case in cases:
                for build in order:
                    # Each round its own miss URLs (a round must not hit the last one's).
                    rps = measure(case, build, 2 * rep + half, run_id)
                    results.setdefault((case[0], case[3]), {"a": [], "b": []})[build].append(rps)
                    B.log(f"ab {case[0]} {case[3]} {build}: {rps:,.0f} req/s")
    B.save_part("ab", report(results, wasm, info, load, 2 * B.REPS))


if __name__ == "__main__":
    B.run_part("bench-ab", main)
