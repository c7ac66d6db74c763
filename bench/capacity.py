#!/usr/bin/env python3
"""`make bench`, third part: the store's capacity (issue 13), side by side in one run.

Three ways to the store, each behind its own Envoy with the filter (in-proxy tier off, so
every hit reads the store), on the same traffic (wrk cycling over 1,000 keys of one size):

- one Redis behind Webdis (the default deployment);
- one Redis behind Webdis and an Envoy redis_proxy (envoy/redis-proxy.yaml: the hop that lets
  Webdis log in as an ACL user);
- a Redis Cluster of three masters and three replicas behind Webdis and the redis_proxy
  (envoy/redis-proxy-cluster.yaml), with `store.redis_cluster`.

Reports Redis-hit req/s per way and its ratio to the first, and the memory one entry takes in
Redis (`MEMORY USAGE` over the stored entries, key and value). Results in
bench/results/<timestamp>-capacity.md and latest-capacity.md. Knob: CAPACITY_S (10).
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

SECONDS = int(os.environ.get("CAPACITY_S", "10"))
CLUSTER_PORTS = [23401, 23402, 23403, 23404, 23405, 23406]
PROXY_SINGLE = (23410, 23411)  # listener, admin
PROXY_CLUSTER = (23412, 23413)
WEBDIS_PROXY = 23414
WEBDIS_CLUSTER = 23415
ADMIN = ("bench-admin", "bench-admin-pw")
PROXY_PASSWORD = "bench-proxy-pw"
B.ENVOY_PORTS.update({"cap-direct": (23420, 23421), "cap-proxy": (23422, 23423),
                      "cap-cluster": (23424, 23425)})
PLUGIN = dict(B.PLUGIN_REDIS_ONLY, namespace="bench-cap")
WAYS = [
    ("one Redis (Webdis → Redis)", "cap-direct", B.WEBDIS_PORT, PLUGIN),
    ("one Redis through redis_proxy (Webdis → redis_proxy → Redis)", "cap-proxy", WEBDIS_PROXY, PLUGIN),
    ("Redis Cluster, 3 masters + 3 replicas (Webdis → redis_proxy → Cluster)", "cap-cluster",
     WEBDIS_CLUSTER, dict(PLUGIN, store=dict(PLUGIN["store"], redis_cluster=True))),
]


def cluster_conf():
    """envoy/redis.conf for the Cluster's nodes: the default user (the proxy logs in as it)
    may also discover the topology, and replicas sync as it; an admin user forms the Cluster
    and reads memory usage."""
    conf = open(os.path.join(B.ROOT, "envoy", "redis.conf")).read()
    line = next(l for l in conf.splitlines() if l.startswith("user default on nopass "))
    conf = conf.replace(line, line + " +cluster|slots +cluster|info +readonly +psync +replconf")
    return conf + f"\nuser {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all\n"


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), "--user", ADMIN[0], "--pass", ADMIN[1],
                           "--no-auth-warning", *args], capture_output=True, text=True).stdout.strip()


def start_cluster():
    conf = os.path.join(B.RUN, "cluster-redis.conf")
    B.write(conf, cluster_conf())
    for p in CLUSTER_PORTS:
        # A fresh Cluster each run: a node keeps the last run's membership in nodes.conf.
        d = os.path.join(B.RUN, f"cluster-{p}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        B.PROCS.start(f"redis-{p}", ["redis-server", conf, "--port", str(p), "--dir", d,
                                     "--cluster-enabled", "yes", "--cluster-config-file",
                                     os.path.join(d, "nodes.conf"), "--cluster-node-timeout", "1000",
                                     "--repl-diskless-sync-delay", "0"])
    for p in CLUSTER_PORTS:
        if not B.wait_until(lambda: cli(p, "PING") == "PONG", 10, f"redis-{p}"):
            B.fail(f"redis-{p}")
    out = subprocess.run(["redis-cli", "--user", ADMIN[0], "--pass", ADMIN[1], "--no-auth-warning",
                          "--cluster", "create", *[f"127.0.0.1:{p}" for p in CLUSTER_PORTS],
                          "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True)
    if "All 16384 slots covered" not in out.stdout:
        raise SystemExit(f"capacity: the Cluster did not form:\n{out.stdout}\n{out.stderr}")
    ok = B.wait_until(lambda: all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in CLUSTER_PORTS)
                      and sum(cli(p, "ROLE").startswith("master") for p in CLUSTER_PORTS) == 3,
                      20)
    if not ok:
        raise SystemExit("capacity: the Cluster never became healthy")


def start_proxy(name, template, ports, seeds):
    listen, admin = ports
    t = open(os.path.join(B.ROOT, "envoy", template)).read()
    t = t.replace("{{PROXY_PORT}}", str(listen)).replace("{{ADMIN_PORT}}", str(admin))
    for placeholder, port in zip(["{{REDIS_PORT}}", "{{REDIS_PORT_2}}", "{{REDIS_PORT_3}}"], seeds):
        t = t.replace(placeholder, str(port))
    path = os.path.join(B.RUN, f"{name}.yaml")
    B.write(path, t)
    # The default user has no password (`nopass` takes any): the proxy logs in as it.
    env = dict(os.environ, FLEET_CACHE_PROXY_PASSWORD=PROXY_PASSWORD,
               FLEET_CACHE_REDIS_USER="default", FLEET_CACHE_REDIS_PASSWORD="unused")
    B.PROCS.start(name, [B.ENVOY, "-c", path, "--disable-hot-restart", "--concurrency", "2",
                         "--base-id", str(admin), "--log-path", os.path.join(B.RUN, f"{name}-envoy.log")],
                  env=env)
    if not B.wait_until(lambda: B.http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200, 15, name):
        B.fail(name)


def start_webdis(name, port, redis_port):
    w = json.loads(B.webdis_json(False))
    w.update(redis_port=redis_port, http_port=port, redis_auth=PROXY_PASSWORD,
             logfile=os.path.join(B.RUN, f"{name}.log"))
    path = os.path.join(B.RUN, f"{name}.json")
    B.write(path, json.dumps(w, indent=2))
    B.PROCS.start(name, ["webdis", path])
    if not B.wait_until(lambda: B.http_get(f"http://127.0.0.1:{port}/PING")[0] == 200, 10, name):
        B.fail(name)


def start_envoys():
    for _, name, webdis, plugin in WAYS:
        saved = B.WEBDIS_PORT
        B.WEBDIS_PORT = webdis
        try:
            yaml = B.ours_yaml(name, plugin)
        finally:
            B.WEBDIS_PORT = saved
        B.start_envoy(name, yaml)
    for _, name, _, _ in WAYS:
        if not B.envoy_ready(name):
            raise SystemExit(f"capacity: Envoy '{name}' not ready: {B.envoy_log_tail(name)}")


def measure(name, tag, run):
    url = f"http://127.0.0.1:{B.ENVOY_PORTS[name][0]}"
    keys = str(B.KEYS_PER_THREAD)
    args = [f"cap{run}{tag}", f"/f/{tag}", keys]
    # The first pass stores every key; the measured pass hits them.
    B.wrk(url, 4, False, args)
    return B.parse_wrk(B.wrk(url, SECONDS, True, args))


def memory_per_entry():
    """Mean `MEMORY USAGE` of the Cluster's entries (key and value, Redis' own accounting), by
    body size: the entries of the Cluster way, read on each master."""
    sizes = {}
    for p in CLUSTER_PORTS:
        if not cli(p, "ROLE").startswith("master"):
            continue
        for key in cli(p, "--scan", "--pattern", "bench-cap:*").splitlines():
            if key.endswith(":lock") or not key:
                continue
            used = cli(p, "MEMORY", "USAGE", key, "SAMPLES", "0")
            length = cli(p, "STRLEN", key)
            if used.isdigit() and length.isdigit():
                sizes.setdefault(int(length) // 1024, []).append((int(used), int(length)))
    return sizes


def report(rows, mem, info, load):
    out = [f"# The store's capacity: one Redis, the redis_proxy hop, a Redis Cluster "
           f"({datetime.datetime.now():%Y-%m-%d %H:%M})", ""]
    out.append(f"Machine: {info.get('nproc')} cores, {info.get('cpu', '')}; load before "
               f"{' '.join(load)}. One run, the three ways "
               f"side by side, each its own Envoy (`--concurrency 2`, in-proxy tier off) with wrk "
               f"cycling over {2 * B.KEYS_PER_THREAD} keys for {SECONDS} s after a pass that "
               f"stores them; everything on this machine's 2 cores.")
    out.append("")
    out.append("| way to the store | body | Redis hits req/s | vs one Redis | p50 ms | p99 ms | non-2xx / errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for tag in [t for t, _ in B.SIZES if t in ("1k", "64k")]:
        base = next((r for w, t, r in rows if t == tag and w == WAYS[0][0]), None)
        for way, t, r in rows:
            if t != tag:
                continue
            ratio = f"{r['rps'] / base['rps']:.2f}x" if base and base.get("rps") and r.get("rps") else "n/a"
            out.append(f"| {way} | {B.SIZE_LABEL[tag]} | {r.get('rps') or 0:,.0f} | {ratio} | "
                       f"{r.get('p50') or 0:.2f} | {r.get('p99') or 0:.2f} | "
                       f"{r.get('non2xx', 0) + r.get('sock_errors', 0)} |")
    out.append("")
    out.append("Memory per entry in Redis (`MEMORY USAGE`: key, value and Redis' own overhead):")
    out.append("")
    out.append("| stored value | entries sampled | memory per entry | overhead over the value |")
    out.append("|---|---:|---:|---:|")
    for kib in sorted(mem):
        xs = mem[kib]
        used = sum(u for u, _ in xs) / len(xs)
        length = sum(n for _, n in xs) / len(xs)
        out.append(f"| {length:,.0f} bytes | {len(xs)} | {used:,.0f} bytes | {used - length:,.0f} bytes |")
    out.append("")
    return "\n".join(out)


def main():
    info, load = B.begin_part()
    start_cluster()
    start_proxy("redis-proxy-single", "redis-proxy.yaml", PROXY_SINGLE, [B.REDIS_PORT] * 3)
    start_proxy("redis-proxy-cluster", "redis-proxy-cluster.yaml", PROXY_CLUSTER, CLUSTER_PORTS[:3])
    start_webdis("webdis-proxy", WEBDIS_PROXY, PROXY_SINGLE[0])
    start_webdis("webdis-cluster", WEBDIS_CLUSTER, PROXY_CLUSTER[0])
    start_envoys()
    run = datetime.datetime.now().strftime("%H%M%S")
    rows = []
    for tag in ("1k", "64k"):
        for way, name, _, _ in WAYS:
            r = measure(name, tag, run)
            B.log(f"capacity {way} {tag}: {r.get('rps') or 0:.0f} req/s")
            rows.append((way, tag, r))
    text = report(rows, memory_per_entry(), info, load)
    B.save_part("capacity", text)


if __name__ == "__main__":
    B.run_part("capacity", main)
