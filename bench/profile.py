#!/usr/bin/env python3
"""`make profile`: where a Redis hit's CPU goes, against plain proxying and an in-proxy hit.

For one body size (PROFILE_SIZE: 1k, 64k or 1m; default 1m) it starts bench.py's servers
(nginx origin, Redis, Webdis, and three Envoys: no cache, fleet-cache with the in-proxy tier
off so every hit reads Redis, fleet-cache with it on), warms the caches, then runs wrk against
each Envoy in turn (PROFILE_ROUNDS rounds, interleaved) and reports, per request:

1. CPU by process (Envoy, Webdis, Redis, nginx; from /proc, so always available);
2. where Envoy's and Webdis' CPU goes, by `perf record -e cpu-clock` samples (a software
   clock: works where hardware counters are "not supported"), grouped by what code ran:
   the kernel, libc's memmove/memcpy and memcmp (split by whether Wasm code is on the stack:
   a host call the filter made, or Envoy's own), the rest of libc, the program's own code,
   and Wasm code (V8's JIT, "[JIT]" to perf). Envoy's binary is stripped, so its own code
   has no names; the groups are what can be told apart without them. Skipped with a note if
   perf can't sample here.

Store callouts per request come from Envoy's counters. Writes bench/results/<stamp>-profile.md.
Knobs: PROFILE_SIZE, PROFILE_ROUNDS (2), BENCH_DURATION (5 s), BENCH_THREADS, BENCH_CONNS.
"""

import collections
import datetime
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

SIZE = os.environ.get("PROFILE_SIZE") or "1m"
ROUNDS = int(os.environ.get("PROFILE_ROUNDS", "2"))
HZ = 2000  # perf samples per second per CPU
CASES = [  # label, Envoy, the bench case it is
    ("plain proxying (case 1)", "noop"),
    ("Redis hit (case 4)", "redis"),
    ("in-proxy hit (case 5)", "memory"),
]
PROCS = ["envoy", "webdis", "redis", "nginx"]


def pids_of(name):
    """A server's PIDs: the leader and its children (nginx' workers)."""
    leader = B.PROCS.pid(name)
    kids = subprocess.run(["pgrep", "-P", str(leader)], capture_output=True, text=True).stdout.split()
    return [leader] + [int(k) for k in kids]


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


def perf_works():
    if not shutil.which("perf"):
        return False
    p = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                       capture_output=True, text=True)
    return p.returncode == 0


def group(stack):
    """What code a sample ran, from its stack (innermost frame first)."""
    top = stack[0]
    in_wasm = any("[JIT]" in f or "perf-" in f for f in stack)
    if "[JIT]" in top or "perf-" in top:
        return "Wasm code (V8 JIT)"
    if "kernel" in top:
        return "kernel (sockets, scheduling)"
    if "memmove" in top or "memcpy" in top:
        return "libc copies, in host calls from Wasm" if in_wasm else "libc copies, the program's own"
    if "memcmp" in top:
        return "libc memcmp"
    if "libc" in top:
        return "libc, other"
    return "host code called from Wasm" if in_wasm else "program's own code"


def perf_groups(data, requests):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"],
                         capture_output=True, text=True).stdout
    counts = collections.Counter()
    for sample in out.split("\n\n"):
        stack = [line.strip() for line in sample.strip().splitlines() if line.strip()]
        if stack:
            counts[group(stack)] += 1
    us_per_sample = 1e6 / HZ
    return {g: n * us_per_sample / requests for g, n in counts.items()}


def measure(url, envoy, perf_dir):
    """wrk against one Envoy: CPU per request by process, and perf groups if perf_dir."""
    pids = {"envoy": pids_of(f"envoy-{envoy}"), "webdis": pids_of("webdis"),
            "redis": pids_of("redis"), "nginx": pids_of("nginx")}
    stats0 = B.envoy_stats(envoy)
    before = {p: ticks(v) for p, v in pids.items()}
    recs = []
    if perf_dir:
        for proc in ("envoy", "webdis"):
            data = os.path.join(perf_dir, f"{envoy}-{proc}.data")
            recs.append((proc, data, subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(HZ), "-g", "-o", data,
                 "-p", ",".join(map(str, pids[proc])), "--", "sleep", str(B.DURATION)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    out = B.wrk(url, B.DURATION, False)
    for _, _, p in recs:
        p.wait()
    after = {p: ticks(v) for p, v in pids.items()}
    stats1 = B.envoy_stats(envoy)
    w = B.parse_wrk(out)
    n, rps = w["requests"], w["rps"] or 0
    if not n or w["non2xx"] or w["sock_errors"]:
        raise SystemExit(f"profile: a failed measurement against {url}:\n{out}")
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    cpu = {p: (after[p] - before[p]) * tick_us / n for p in pids}
    callouts = stats1.get("cluster.fleet_cache_store.upstream_rq_total", 0) - stats0.get(
        "cluster.fleet_cache_store.upstream_rq_total", 0)
    groups = {proc: perf_groups(data, rps * B.DURATION) for proc, data, _ in recs}
    return rps, cpu, callouts / n, groups


def main():
    if SIZE not in dict(B.SIZES):
        raise SystemExit(f"profile: PROFILE_SIZE must be one of {[t for t, _ in B.SIZES]}")
    os.makedirs(B.RUN, exist_ok=True)
    B.PROCS.cleanup_stale()
    can_perf = perf_works()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = f"/f/{SIZE}"
    try:
        B.start_backends()
        cfgs = B.envoy_configs(False)
        for _, envoy in CASES:
            B.start_envoy(envoy, cfgs[envoy])
        for _, envoy in CASES:
            if not B.envoy_ready(envoy):
                B.fail(f"envoy-{envoy}")
        for _, envoy in CASES[1:]:
            ok, last = B.warm_ours(f"http://127.0.0.1:{B.ENVOY_PORTS[envoy][0]}{path}")
            if not ok:
                raise SystemExit(f"profile: {envoy} never hit: {last}")
        results = collections.defaultdict(list)
        with tempfile.TemporaryDirectory(prefix="profile-", dir=B.RUN) as perf_dir:
            for r in range(ROUNDS):
                order = CASES if r % 2 == 0 else list(reversed(CASES))
                for label, envoy in order:
                    url = f"http://127.0.0.1:{B.ENVOY_PORTS[envoy][0]}{path}"
                    B.wrk(url, B.WARMUP, False)
                    res = measure(url, envoy, perf_dir if can_perf and r == ROUNDS - 1 else None)
                    B.log(f"profile: {label} {SIZE}: {res[0]:,.0f} req/s")
                    results[label].append(res)
    finally:
        B.PROCS.stop_all()
    report = render(results, can_perf, stamp)
    out = os.path.join(B.RESULTS, f"{stamp}-profile.md")
    B.write(out, report)
    print(report)
    B.log(f"profile: wrote {out}")


def render(results, can_perf, stamp):
    size = B.SIZE_LABEL[SIZE]
    lines = [f"# Where a Redis hit's CPU goes, {size} bodies ({stamp})", "",
             f"`make profile` (bench/profile.py): wrk `-t{B.THREADS} -c{B.CONNS}`, {B.DURATION} s "
             f"per run after {B.WARMUP} s of warm-up, {ROUNDS} rounds interleaved; medians. "
             "Envoy `--concurrency 2`; Redis, Webdis, nginx and wrk on the same 2 cores.", "",
             "## CPU per request, by process (µs)", "",
             "| case | req/s | Envoy | Webdis | Redis | nginx | store callouts/req |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    for label, _ in CASES:
        rs = results[label]
        row = [f"{med([r[0] for r in rs]):,.0f}"]
        row += [f"{med([r[1][p] for r in rs]):,.0f}" for p in PROCS]
        row.append(f"{med([r[2] for r in rs]):.2f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    if not can_perf:
        lines += ["perf could not sample here (`perf record -e cpu-clock` failed): no breakdown.", ""]
        return "\n".join(lines)
    lines += ["## Envoy's and Webdis' CPU per request, by what ran (µs, perf cpu-clock samples, "
              "last round)", ""]
    groups = sorted({g for label, _ in CASES for r in results[label][-1:]
                     for proc in r[3].values() for g in proc})
    for proc in ("envoy", "webdis"):
        lines += [f"### {proc.capitalize()}", "",
                  "| what ran | " + " | ".join(label for label, _ in CASES) + " |",
                  "|---|" + "---:|" * len(CASES)]
        for g in groups:
            vals = [results[label][-1][3].get(proc, {}).get(g, 0.0) for label, _ in CASES]
            if max(vals) < 0.5:
                continue
            lines.append(f"| {g} | " + " | ".join(f"{v:,.0f}" for v in vals) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
