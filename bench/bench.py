#!/usr/bin/env python3
"""`make bench`: fleet-cache against plain Envoy, Envoy's built-in cache, direct_response and a
minimal proxy-wasm filter (bench/floor/).

Starts everything on 127.0.0.1 (ports 23000-23999), each server detached in its own session
with its PID recorded under target/bench/run/, measures with wrk, and stops what it started by
PID (also on Ctrl-C). Writes bench/results/<timestamp>.md, latest.md, latest.png and
latest.json. See bench/README.md for the cases and how to read the results.

Knobs (environment): BENCH_REPS (2), BENCH_DURATION (5 s), BENCH_WARMUP (2 s),
BENCH_THREADS (2), BENCH_CONNS (16), BENCH_TTFB_N (20), BENCH_ONLY (comma-separated case ids,
e.g. "1,4" to run a subset; context rows are then skipped unless "ctx" is listed).
"""

import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "target", "bench", "run")
WWW = os.path.join(RUN, "www")
RESULTS = os.path.join(ROOT, "bench", "results")
ENVOY = os.path.join(ROOT, ".venv", "envoy")
WASM = os.path.join(ROOT, "target", "wasm32-wasip1", "release", "fleet_cache.wasm")
ORIGIN_BIN = os.path.join(ROOT, "target", "release", "examples", "demo_origin")
MISS_LUA = os.path.join(ROOT, "bench", "miss.lua")
# Case 3w: the smallest proxy-wasm filter answering locally (bench/floor/, its own crate).
FLOOR_MANIFEST = os.path.join(ROOT, "bench", "floor", "Cargo.toml")
FLOOR_WASM = os.path.join(ROOT, "bench", "floor", "target", "wasm32-wasip1", "release", "floor.wasm")

REPS = int(os.environ.get("BENCH_REPS", "2"))
DURATION = int(os.environ.get("BENCH_DURATION", "5"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNS = int(os.environ.get("BENCH_CONNS", "16"))
TTFB_N = int(os.environ.get("BENCH_TTFB_N", "20"))
ONLY = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}

# Every port this bench uses; nothing else on the machine is expected in 23000-23999.
NGINX_PORT = 23080  # the fast origin; also proxies /slow/ to the slow origin
SLOW_PORT = 23081  # demo_origin (tests/support/origin.rs): delays, chunks, pauses
REDIS_PORT = 23379
WEBDIS_PORT = 23380
ENVOY_PORTS = {  # name: (listener, admin)
    "noop": (23110, 23111),
    "builtin": (23120, 23121),
    "direct": (23130, 23131),
    "redis": (23140, 23141),
    "memory": (23150, 23151),
    "floor": (23160, 23161),
    "floorc": (23170, 23171),
    "floorm": (23180, 23181),
    "floors": (23190, 23191),
}

SIZES = [("1k", 1024), ("64k", 64 * 1024), ("1m", 1024 * 1024)]
# JSON bodies (an API's records), which the filter stores compressed: cases 1j and 4j.
JSON_SIZES = ["64k", "1m"]
SIZE_LABEL = {"1k": "1 KiB", "64k": "64 KiB", "1m": "1 MiB"}
SLOW_DELAY_MS = 20
# The slow origin's resource: 1 KiB, cacheable, after 20 ms (through nginx's /slow/ proxy).
SLOW_PATH = f"/slow/d?size=1024&delay_ms={SLOW_DELAY_MS}&cc=public%2C%20max-age%3D3600"
# The streamed response of case 7: 5 chunks of 100 bytes, 100 ms apart, cacheable.
STREAM_PATH = "/slow/s?chunks=5&pause_ms=100&size=500&cc=max-age%3D60"

PLUGIN_REDIS = {
    "store": {"cluster": "fleet_cache_store", "authority": "webdis", "timeout_ms": 1000},
    "namespace": "bench",
    "max_ttl_s": 3600,
}
PLUGIN_MEMORY = dict(PLUGIN_REDIS, memory={"max_bytes": 67108864, "max_age_ms": 2000})
# Case 4 must reach Redis on every hit: where the build has the in-proxy tier (on by default),
# it is turned off with max_bytes 0. A build without it refuses the `memory` field: then case 4
# runs with PLUGIN_REDIS as it is (see start of main()).
PLUGIN_REDIS_ONLY = dict(PLUGIN_REDIS, memory={"max_bytes": 0})

# Case 4k/5k: distinct keys each wrk thread cycles through.
KEYS_PER_THREAD = 500

WASM_SIZE_TARGET = 400_000  # bytes ("400 KB")


def log(msg):
    print(f"bench: {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes: started detached (own session), PIDs recorded, stopped by PID only.


class Procs:
    def __init__(self):
        self.procs = {}  # name -> Popen, in start order

    def cleanup_stale(self):
        """Stops servers a previous, interrupted bench left behind: only PIDs it recorded, and
        only if that PID still runs the program recorded with it."""
        if not os.path.isdir(RUN):
            return
        for f in sorted(os.listdir(RUN)):
            if not f.endswith(".pid"):
                continue
            path = os.path.join(RUN, f)
            try:
                pid_s, exe = open(path).read().split("\n", 1)
                pid = int(pid_s)
                cmd0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
                if cmd0 == exe.strip():
                    log(f"stopping {f[:-4]} (pid {pid}) left by a previous run")
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(50):
                        if not os.path.exists(f"/proc/{pid}"):
                            break
                        time.sleep(0.1)
            except (OSError, ValueError):
                pass
            os.unlink(path)

    def start(self, name, argv, env=None):
        logf = open(os.path.join(RUN, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=ROOT, env=env)
        logf.close()
        with open(os.path.join(RUN, f"{name}.pid"), "w") as f:
            f.write(f"{p.pid}\n{argv[0]}\n")
        self.procs[name] = p
        return p

    def alive(self, name):
        return name in self.procs and self.procs[name].poll() is None

    def pid(self, name):
        return self.procs[name].pid

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:
            os.unlink(os.path.join(RUN, f"{name}.pid"))
        except OSError:
            pass

    def stop_all(self):
        for name in reversed(list(self.procs)):
            self.stop(name)


PROCS = Procs()


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_get(url, timeout=5.0):
    """(status, headers dict lowercased, body) or (None, {}, b"") if unreachable."""
    req = urllib.request.Request(url, headers={"User-Agent": "fleet-cache-bench"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except (OSError, urllib.error.URLError):
        return None, {}, b""


def wait_until(pred, seconds, name=None):
    end = time.time() + seconds
    while time.time() < end:
        if name is not None and not PROCS.alive(name):
            return False
        if pred():
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------------------------
# CPU accounting: who used the two cores during a measured run.


def proc_cpu_ticks(leader_pid):
    """utime+stime (clock ticks) of every process in the session `leader_pid` leads (nginx's
    workers are in its master's session)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is state (field 3); session is field 6, utime 14, stime 15.
        if int(fields[3]) == leader_pid:
            total += int(fields[11]) + int(fields[12])
    return total


def machine_ticks():
    """(busy, total) jiffies over all cores, from /proc/stat."""
    vals = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


# --------------------------------------------------------------------------------------------
# Configs.


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def save_part(part, text):
    """A later part's report (protect.py, capacity.py): bench/results/<timestamp>-<part>.md
    and latest-<part>.md, and on stdout."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{stamp}-{part}.md", f"latest-{part}.md"):
        write(os.path.join(RESULTS, name), text)
    print(text)


def begin_part():
    """A later part's start: stale servers stopped, the machine noted (before any load), the
    common backends (nginx, the slow origin, Redis, Webdis) started. Returns (info, load)."""
    os.makedirs(RUN, exist_ok=True)
    PROCS.cleanup_stale()
    info = machine_info()
    load = loadavg()
    start_backends()
    return info, load


def run_part(part, main):
    """Runs a later part's `main`, stopping every process it started whatever happens."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{part}: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        PROCS.stop_all()


def nginx_conf():
    return f"""# The fast origin: fixed files with Cache-Control, and /slow/ proxied to demo_origin.
worker_processes 1;
daemon off;
pid {RUN}/nginx.master.pid;
error_log {RUN}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  client_body_temp_path {RUN}/nginx-tmp/body;
  proxy_temp_path {RUN}/nginx-tmp/proxy;
  upstream slow_origin {{
    server 127.0.0.1:{SLOW_PORT};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{NGINX_PORT};
    root {WWW};
    location / {{
      add_header Cache-Control "public, max-age=3600";
    }}
    location /j/ {{
      default_type application/json;
      add_header Cache-Control "public, max-age=3600";
    }}
    # The same files, not storable: a miss through fleet-cache then costs only the lookup.
    location /nostore/ {{
      alias {WWW}/f/;
      add_header Cache-Control "no-store";
    }}
    location /slow/ {{
      proxy_pass http://slow_origin/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def envoy_yaml(name, http_filters, routes, extra_route_config=""):
    listen, admin = ENVOY_PORTS[name]
    return f"""# bench: {name}. Same listener and HCM settings in every case; no access log.
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:{extra_route_config}
            virtual_hosts:
            - name: origin
              domains: ["*"]
              routes:
{routes}
          http_filters:
{http_filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {NGINX_PORT} }}
"""


ORIGIN_ROUTE = """              - match: { prefix: "/" }
                route: { cluster: origin, timeout: 60s }"""

BUILTIN_CACHE = """          - name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"""


def direct_routes():
    out = []
    for tag, _ in SIZES:
        out.append(f"""              - match: {{ path: "/f/{tag}" }}
                direct_response:
                  status: 200
                  body: {{ filename: {WWW}/f/{tag} }}
                response_headers_to_add:
                - header: {{ key: cache-control, value: "public, max-age=3600" }}
                - header: {{ key: content-type, value: application/octet-stream }}""")
    out.append("""              - match: { prefix: "/" }
                direct_response: { status: 404 }""")
    return "\n".join(out)


def floor_filter(configuration=None):
    """Case 3w's filter; with `cache-hit`, case 3c's; with `shared-data-hit`, case 3s's; with
    `cache-miss`, case 3m's (bench/floor/src/lib.rs)."""
    conf = ""
    if configuration:
        conf = f"""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}"""
    return f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: floor{conf}
                vm_config:
                  vm_id: floor
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local: {{ filename: {FLOOR_WASM} }}"""


# Case 3m's store cluster: envoy/envoy.yaml's `fleet_cache_store`, the same name, so its
# callouts are counted like fleet-cache's.
FLOOR_STORE_CLUSTER = f"""  - name: fleet_cache_store
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: fleet_cache_store
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {WEBDIS_PORT} }}
"""


def ours_yaml(name, plugin, wasm=WASM):
    """envoy/envoy.yaml, the project's own template, rendered as scripts/run.sh does."""
    listen, admin = ENVOY_PORTS[name]
    t = open(os.path.join(ROOT, "envoy", "envoy.yaml")).read()
    for k, v in {"LISTEN_PORT": str(listen), "ADMIN_PORT": str(admin),
                 "ORIGIN_PORT": str(NGINX_PORT), "WEBDIS_PORT": str(WEBDIS_PORT),
                 "WASM_PATH": wasm, "PLUGIN_CONFIG": json.dumps(json.dumps(plugin))}.items():
        t = t.replace("{{" + k + "}}", v)
    left = re.findall(r"\{\{[A-Z_]+\}\}", t)
    if left:
        raise SystemExit(f"bench: envoy/envoy.yaml has placeholders this bench does not fill: {left}")
    return t


def envoy_configs(floor):
    cfgs = {
        "noop": envoy_yaml("noop", "", ORIGIN_ROUTE),
        "builtin": envoy_yaml("builtin", BUILTIN_CACHE, ORIGIN_ROUTE),
        "direct": envoy_yaml("direct", "", direct_routes(),
                             "\n            max_direct_response_body_size_bytes: 2097152"),
        "redis": ours_yaml("redis", PLUGIN_REDIS_ONLY),
        "memory": ours_yaml("memory", PLUGIN_MEMORY),
    }
    if floor:
        # The router is there because Envoy wants a terminal filter; the Wasm filter answers
        # every request before it runs.
        cfgs["floor"] = envoy_yaml("floor", floor_filter(), ORIGIN_ROUTE)
        cfgs["floorc"] = envoy_yaml("floorc", floor_filter("cache-hit"), ORIGIN_ROUTE)
        # Case 3s: 3c plus one shared-data read per request (every VM stores the bodies).
        cfgs["floors"] = envoy_yaml("floors", floor_filter("shared-data-hit"), ORIGIN_ROUTE)
        # Case 3m: requests reach the origin through the router; the filter calls Webdis.
        cfgs["floorm"] = envoy_yaml("floorm", floor_filter("cache-miss"), ORIGIN_ROUTE) + FLOOR_STORE_CLUSTER
    return cfgs


def want_floor():
    return not ONLY or bool(ONLY & {"3w", "3c", "3m", "3s"})


def build_floor():
    """Cases 3w, 3c, 3s, 3m's filter: built here (a few seconds the first time), not by `make build`."""
    log("building bench/floor (cases 3w, 3c, 3s, 3m)")
    p = subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1",
                        "--manifest-path", FLOOR_MANIFEST], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(FLOOR_WASM):
        raise SystemExit(f"bench: building bench/floor failed:\n{p.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------
# Starting the stack.


def webdis_json(with_set):
    """envoy/webdis.json rendered; for case 3m (`with_set`), a bench-only copy whose ACL also
    lets SET through: the floor's write is `PUT /SET/<key>`, where fleet-cache writes with
    EVAL (the shipped ACL: GET, EVAL, PING). Redis' own ACL (envoy/redis.conf) has +set."""
    w = open(os.path.join(ROOT, "envoy", "webdis.json")).read()
    w = (w.replace("{{REDIS_PORT}}", str(REDIS_PORT)).replace("{{WEBDIS_PORT}}", str(WEBDIS_PORT))
         .replace("{{WEBDIS_LOG}}", os.path.join(RUN, "webdis.log")))
    if not with_set:
        return w
    conf = json.loads(w)
    enabled = [rule["enabled"] for rule in conf.get("acl", []) if "enabled" in rule and "http_basic_auth" not in rule]
    if not enabled:
        raise SystemExit("bench: envoy/webdis.json has no unauthenticated `enabled` ACL rule to add SET to (case 3m)")
    if "SET" not in enabled[-1]:
        enabled[-1].append("SET")
    return json.dumps(conf, indent=2) + "\n"


def start_backends(webdis_set=False):
    os.makedirs(os.path.join(WWW, "f"), exist_ok=True)
    os.makedirs(os.path.join(RUN, "nginx-tmp"), exist_ok=True)
    os.makedirs(os.path.join(WWW, "j"), exist_ok=True)
    for tag, n in SIZES:
        # Deterministic bytes that do not compress (zlib keeps them as they are), so these
        # cases measure entries stored as they are.
        write_bytes(os.path.join(WWW, "f", tag), random.Random(n).randbytes(n))
        if tag in JSON_SIZES:
            write_bytes(os.path.join(WWW, "j", tag), json_records(n))

    PROCS.start("redis", ["redis-server", os.path.join(ROOT, "envoy", "redis.conf"),
                          "--port", str(REDIS_PORT), "--dir", RUN])
    if not wait_until(lambda: subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"],
                                             capture_output=True, text=True).stdout.strip() == "PONG",
                      10, "redis"):
        fail("redis")

    write(os.path.join(RUN, "webdis.json"), webdis_json(webdis_set))
    PROCS.start("webdis", ["webdis", os.path.join(RUN, "webdis.json")])
    if not wait_until(lambda: http_get(f"http://127.0.0.1:{WEBDIS_PORT}/PING")[0] == 200, 10, "webdis"):
        fail("webdis")

    PROCS.start("slow_origin", [ORIGIN_BIN, str(SLOW_PORT)])
    if not wait_until(lambda: http_get(f"http://127.0.0.1:{SLOW_PORT}/hello")[0] == 200, 10, "slow_origin"):
        fail("slow_origin")

    write(os.path.join(RUN, "nginx.conf"), nginx_conf())
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    PROCS.start("nginx", [nginx, "-e", os.path.join(RUN, "nginx-error.log"),
                          "-p", RUN, "-c", os.path.join(RUN, "nginx.conf")])
    if not wait_until(lambda: http_get(f"http://127.0.0.1:{NGINX_PORT}/f/1k")[0] == 200, 10, "nginx"):
        fail("nginx")
    st, _, body = http_get(f"http://127.0.0.1:{NGINX_PORT}{SLOW_PATH}")
    if st != 200 or len(body) != 1024:
        raise SystemExit(f"bench: nginx -> slow origin answered {st}, {len(body)} bytes")

    # Probe values for the Webdis-direct context rows (plain SET through redis-cli).
    for tag, _ in SIZES:
        with open(os.path.join(WWW, "f", tag), "rb") as f:
            subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "-x", "SET", f"benchprobe:{tag}"],
                           stdin=f, check=True, capture_output=True)


def json_records(n):
    """`n` bytes of JSON records as an API returns them (ids, SKUs, names, prices, stock):
    zlib takes it to about a sixth, like real JSON."""
    rnd = random.Random(n)
    words = ["blue", "steel", "oak", "large", "compact", "pro", "kit", "set", "lamp", "chair",
             "table", "shelf", "mug", "cable", "hub", "desk"]
    out, i = ["["], 0
    size = 1
    while size < n:
        rec = json.dumps({"id": i, "sku": f"SKU-{rnd.randrange(100000):05d}",
                          "name": " ".join(rnd.choice(words) for _ in range(3)),
                          "price": round(rnd.uniform(1, 500), 2), "stock": rnd.randrange(40),
                          "tags": rnd.sample(words, 2)}, separators=(",", ":")) + ","
        out.append(rec)
        size += len(rec)
        i += 1
    return "".join(out).encode()[:n - 1] + b"]"


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def fail(name):
    tail = ""
    try:
        tail = "".join(open(os.path.join(RUN, f"{name}.log")).readlines()[-30:])
    except OSError:
        pass
    raise SystemExit(f"bench: {name} did not come up; its log:\n{tail}")


def start_envoy(name, yaml):
    path = os.path.join(RUN, f"envoy-{name}.yaml")
    write(path, yaml)
    PROCS.start(f"envoy-{name}", [ENVOY, "-c", path, "--disable-hot-restart", "--concurrency", "2",
                                  "--log-level", "warn"])


def envoy_ready(name):
    _, admin = ENVOY_PORTS[name]
    return wait_until(lambda: http_get(f"http://127.0.0.1:{admin}/ready", 1)[0] == 200, 20,
                      f"envoy-{name}")


def envoy_log_tail(name, n=5):
    try:
        lines = open(os.path.join(RUN, f"envoy-{name}.log")).read().splitlines()
    except OSError:
        return ""
    errs = [line for line in lines if "error" in line.lower() or "critical" in line.lower()]
    return " | ".join((errs or lines)[-n:])


def envoy_stats(name):
    _, admin = ENVOY_PORTS[name]
    st, _, body = http_get(f"http://127.0.0.1:{admin}/stats?usedonly", 5)
    out = {}
    if st != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


# --------------------------------------------------------------------------------------------
# Warming and checking each case.


def warm_ours(url):
    """First request stores (a miss), later ones must say hit. Returns the last cache-status."""
    last = ""
    for _ in range(50):
        st, h, _ = http_get(url, 5)
        last = h.get("cache-status", f"(status {st}, no cache-status)")
        if st == 200 and "hit" in [part.strip() for part in last.split(";")]:
            return True, last
        time.sleep(0.1)
    return False, last


def warm_builtin(url):
    last = ""
    for _ in range(30):
        st, h, _ = http_get(url, 5)
        if st == 200 and "age" in h:
            return True, f"age: {h['age']}"
        last = f"status {st}, no age header"
        time.sleep(0.1)
    return False, last


def check_floor_miss(row, run_id):
    """Case 3m: one request must be answered in full and make its two store callouts, both
    answered 2xx by Webdis, and its write must land in Redis. Returns a warm-up note; a failure
    stops the bench saying what is wrong."""
    name = row["envoy"]
    path = f"{row['path']}?bust={run_id}-check"
    st0 = envoy_stats(name)
    st, h, body = http_get(f"http://127.0.0.1:{ENVOY_PORTS[name][0]}{path}", 10)
    size = dict(SIZES)[row["size"]]
    if st != 200 or len(body) != size:
        why = h.get("floor-error") or envoy_log_tail(name)
        raise SystemExit(f"bench: case 3m: {path} answered {st}, {len(body)} bytes (want 200, {size}): {why}")
    key = f"floor:{path}"
    stored = None
    ok2xx = 0
    for _ in range(50):
        stored = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "STRLEN", key],
                                capture_output=True, text=True).stdout.strip()
        st1 = envoy_stats(name)
        ok2xx = st1.get("cluster.fleet_cache_store.upstream_rq_2xx", 0) - st0.get(
            "cluster.fleet_cache_store.upstream_rq_2xx", 0)
        if stored == str(size) and ok2xx >= 2:
            return f"case 3m: lookup and write answered 2xx by Webdis, `{key}` stored ({stored} bytes)"
        time.sleep(0.1)
    codes = {k.rsplit(".", 1)[1]: v - st0.get(k, 0) for k, v in envoy_stats(name).items()
             if k.startswith("cluster.fleet_cache_store.upstream_rq_") and k[-3:-2].isdigit()}
    raise SystemExit(f"bench: case 3m: store callouts answered {codes or 'nothing'} (want 2 × 2xx), "
                     f"Redis STRLEN {key} = {stored!r} (want {size}); Webdis log "
                     f"{os.path.join(RUN, 'webdis.log')}; Envoy: {envoy_log_tail(name)}")


# --------------------------------------------------------------------------------------------
# wrk.

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(out):
    r = {"rps": None, "p50": None, "p99": None, "non2xx": 0, "sock_errors": 0, "requests": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            r[key] = to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["sock_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    return r


def wrk(url, seconds, latency, script_args=None):
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNS}", f"-d{seconds}s", "--timeout", "5s"]
    if latency:
        argv.append("--latency")
    if script_args is not None:
        argv += ["-s", MISS_LUA, url, "--"] + script_args
    else:
        argv.append(url)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    return p.stdout + p.stderr


# --------------------------------------------------------------------------------------------
# The cases. Each row: id, label, profile, size tag, Envoy name (or None), url, kind.


def lookup_path(key):
    """The filter's lookup of one key, exactly as it sends it (`store::encode`, printed by
    examples/lookup_path.rs)."""
    out = subprocess.run(["cargo", "run", "-q", "--release", "--example", "lookup_path", "--", key],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def case_rows(memory_ok):
    rows = []

    def add(cid, label, profile, size, envoy, path, kind="get", port=None):
        if ONLY and cid not in ONLY and not (cid.startswith("ctx") and "ctx" in ONLY):
            return
        if port is None:
            port = ENVOY_PORTS[envoy][0]
        rows.append(dict(id=cid, label=label, profile=profile, size=size, envoy=envoy,
                         url=f"http://127.0.0.1:{port}{path}", path=path, kind=kind))

    for tag, _ in SIZES:
        add("1", "Envoy, no cache (reference)", "fast", tag, "noop", f"/f/{tag}")
        add("2", "Envoy built-in cache, hit", "fast", tag, "builtin", f"/f/{tag}")
        add("3", "Envoy direct_response (ceiling)", "fast", tag, "direct", f"/f/{tag}")
        add("3w", "minimal proxy-wasm filter, local reply (floor)", "fast", tag, "floor", f"/f/{tag}")
        add("3c", "proxy-wasm filter making a cache hit's host calls (floor of a cache)", "fast", tag,
            "floorc", f"/f/{tag}")
        add("3s", "3c plus one Envoy shared-data read, its bytes the body, no decoding (floor of a "
            "shared-data tier)", "fast", tag, "floors", f"/f/{tag}")
        add("4", "fleet-cache, Redis hit", "fast", tag, "redis", f"/f/{tag}")
        if memory_ok:
            add("5", "fleet-cache, in-proxy hit", "fast", tag, "memory", f"/f/{tag}")
    # JSON bodies, stored compressed: a Redis hit reads and unpacks a sixth of the bytes.
    for tag in JSON_SIZES:
        add("1j", "Envoy, no cache, JSON body (reference of 4j)", "fast", tag, "noop", f"/j/{tag}")
        add("4j", "fleet-cache, Redis hit, JSON body (stored compressed)", "fast", tag, "redis",
            f"/j/{tag}")
    # Hits spread over many entries: no two connections want one key at once, so lookups can
    # be batched but not shared (cases 4 and 5 hammer one key).
    add("4k", f"fleet-cache, Redis hit, {KEYS_PER_THREAD * THREADS:,} keys", "fast", "1k", "redis",
        "/f/1k", "keys")
    if memory_ok:
        add("5k", f"fleet-cache, in-proxy hit, {KEYS_PER_THREAD * THREADS:,} keys", "fast", "1k",
            "memory", "/f/1k", "keys")
    # Misses run through the most complete configuration there is (with the in-proxy tier when
    # the build has it): every request pays a lookup, then the recording and the write.
    ours = "memory" if memory_ok else "redis"
    add("6", "fleet-cache, miss (cache-busting)", "fast", "1k", ours, "/f/1k", "miss")
    add("6n", "fleet-cache, miss, no-store response (lookup only)", "fast", "1k", ours, "/nostore/1k",
        "miss")
    add("1b", "Envoy, no cache, cache-busting wrk script", "fast", "1k", "noop", "/f/1k", "miss")
    add("3m", "proxy-wasm filter making a naive miss's host calls: one lookup + one write callout "
        "(floor of a shared-store miss)", "fast", "1k", "floorm", "/f/1k", "miss")
    # Slow origin: what a user gains.
    add("1", "Envoy, no cache (reference)", "slow", "1k", "noop", SLOW_PATH)
    add("2", "Envoy built-in cache, hit", "slow", "1k", "builtin", SLOW_PATH)
    add("4", "fleet-cache, Redis hit", "slow", "1k", "redis", SLOW_PATH)
    if memory_ok:
        add("5", "fleet-cache, in-proxy hit", "slow", "1k", "memory", SLOW_PATH)
    add("6", "fleet-cache, miss (cache-busting)", "slow", "1k", ours, SLOW_PATH, "miss")
    # Context: the pieces on their own.
    add("ctx-nginx", "nginx origin direct", "context", "1k", None, "/f/1k", port=NGINX_PORT)
    add("ctx-demo", "demo_origin direct (no delay)", "context", "1k", None,
        "/d?size=1024&cc=public%2C%20max-age%3D3600", port=SLOW_PORT)
    for tag, _ in SIZES:
        add("ctx-webdis", "Webdis, the filter's lookup of one key, direct", "context", tag, None,
            lookup_path(f"benchprobe:{tag}"), port=WEBDIS_PORT)
    return rows


def server_pids(row):
    names = ["nginx", "slow_origin", "webdis", "redis"]
    if row["envoy"]:
        names.insert(0, f"envoy-{row['envoy']}")
    return {n: PROCS.pid(n) for n in names if PROCS.alive(n)}


def run_one(row, rep, run_id):
    miss = row["kind"] == "miss"
    sargs = None
    if miss:
        sargs = [f"{run_id}r{rep}c{row['id']}{row['profile']}w", row["path"]]
    elif row["kind"] == "keys":
        # The same keys in warm-up and measurement: the warm-up stores them.
        sargs = [f"{run_id}c{row['id']}", row["path"], str(KEYS_PER_THREAD)]
        wrk(row["url"], WARMUP, False, sargs)
    wrk(row["url"], WARMUP, False, sargs)
    if miss:
        sargs[0] = sargs[0][:-1] + "m"
    pids = server_pids(row)
    cpu0 = {n: proc_cpu_ticks(p) for n, p in pids.items()}
    busy0, tot0 = machine_ticks()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    st0 = envoy_stats(row["envoy"]) if row["envoy"] else {}
    la = loadavg()[0]
    out = wrk(row["url"], DURATION, True, sargs)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, tot1 = machine_ticks()
    cpu1 = {n: proc_cpu_ticks(p) for n, p in pids.items()}
    st1 = envoy_stats(row["envoy"]) if row["envoy"] else {}
    r = parse_wrk(out)
    if r["rps"] is None:
        r["error"] = out.strip()[-500:]
    hz = os.sysconf("SC_CLK_TCK")
    r["cpu_s"] = {n: (cpu1[n] - cpu0.get(n, 0)) / hz for n in cpu1}
    r["cpu_s"]["wrk"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    ncpu = os.cpu_count() or 1
    r["machine_busy_cores"] = (busy1 - busy0) / max(1, tot1 - tot0) * ncpu
    r["load1"] = float(la)

    def d(k):
        return st1.get(k, 0) - st0.get(k, 0)

    if row["envoy"]:
        r["origin_rq"] = d("cluster.origin.upstream_rq_total")
        r["store_rq"] = d("cluster.fleet_cache_store.upstream_rq_total")
        r["fc_hits"] = d("wasmcustom.fleet_cache_hits")
        r["fc_memory_hits"] = d("wasmcustom.fleet_cache_memory_hits")
        r["fc_misses"] = d("wasmcustom.fleet_cache_misses")
        r["fc_store_errors"] = d("wasmcustom.fleet_cache_store_errors")
        r["downstream_rq"] = d("http.ingress.downstream_rq_total")
    return r


def stored_ratios(run_id):
    """The bytes one JSON entry takes in Redis over its body's, per size: a URL of its own
    stored through case 4's Envoy, the bytes its write sent (`fleet_cache_bytes_stored`)."""
    out = {}
    for tag in JSON_SIZES:
        if ONLY and "4j" not in ONLY:
            continue
        counter = "wasmcustom.fleet_cache_bytes_stored"
        before = envoy_stats("redis")
        url = f"http://127.0.0.1:{ENVOY_PORTS['redis'][0]}/j/{tag}?stored={run_id}"
        st, _, body = http_get(url, 10)
        published = lambda: envoy_stats("redis").get("wasmcustom.fleet_cache_published", 0)  # noqa: E731
        if st != 200 or not wait_until(
                lambda: published() > before.get("wasmcustom.fleet_cache_published", 0), 10):
            log(f"stored ratio {tag}: nothing stored")
            continue
        out[tag] = (envoy_stats("redis").get(counter, 0) - before.get(counter, 0)) / len(body)
    return out


# --------------------------------------------------------------------------------------------
# Case 7: time to first byte of a streamed response, without and with the filter (a miss).


def curl_ttfb(url):
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "-w", "TTFB=%{time_starttransfer}",
                        url], capture_output=True, text=True, timeout=30)
    m = re.search(r"TTFB=([\d.]+)", p.stdout)
    cs = re.search(r"^cache-status:\s*(.*?)\r?$", p.stdout, re.M | re.I)
    return (float(m.group(1)) * 1000 if m else None), (cs.group(1) if cs else "")


def measure_ttfb(run_id, ours):
    targets = {
        "origin (through nginx, no Envoy)": f"http://127.0.0.1:{NGINX_PORT}",
        "Envoy, no filter": f"http://127.0.0.1:{ENVOY_PORTS['noop'][0]}",
        "Envoy + fleet-cache (miss)": f"http://127.0.0.1:{ENVOY_PORTS[ours][0]}",
    }
    samples = {k: [] for k in targets}
    statuses = set()
    for i in range(TTFB_N):
        for k, base in targets.items():
            t, cs = curl_ttfb(f"{base}{STREAM_PATH}&bust={run_id}-ttfb-{i}")
            if t is not None:
                samples[k].append(t)
            if "fleet-cache" in k:
                statuses.add(cs.split(";")[1].strip() if ";" in cs else cs)
    return {k: {"median_ms": statistics.median(v) if v else None,
                "p90_ms": sorted(v)[int(len(v) * 0.9) - 1] if v else None, "n": len(v)}
            for k, v in samples.items()}, sorted(statuses)


# --------------------------------------------------------------------------------------------
# Reporting.


def fmt_rps(x):
    return "n/a" if x is None else f"{x:,.0f}"


def fmt_ms(x):
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def machine_info():
    info = {"nproc": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["kernel"] = os.uname().release
    v = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
    info["envoy"] = v.split("version:", 1)[-1].strip()
    info["wrk"] = (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
                   or ["?"])[0]
    info["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    info["wasm_bytes"] = os.path.getsize(WASM)
    if os.path.exists(FLOOR_WASM):
        info["floor_wasm_bytes"] = os.path.getsize(FLOOR_WASM)
    g = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    info["commit"] = g.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")
    return info


def aggregate(rows, runs):
    """Per row: medians over repetitions."""
    for row in rows:
        rs = [r for r in runs.get(key(row), []) if r.get("rps") is not None]
        row["n"] = len(rs)
        row["rps_runs"] = [r["rps"] for r in rs]
        for k in ("rps", "p50", "p99"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = statistics.median(vals) if vals else None
        row["errors"] = sum(r.get("non2xx", 0) + r.get("sock_errors", 0) for r in rs)
        for k in ("origin_rq", "store_rq", "fc_hits", "fc_memory_hits", "fc_misses", "fc_store_errors",
                  "downstream_rq"):
            vals = [r[k] for r in rs if k in r]
            row[k] = sum(vals) if vals else None
        reqs = sum(r.get("requests", 0) for r in rs)
        cpu = {}
        for r in rs:
            for n, s in r.get("cpu_s", {}).items():
                cpu[n] = cpu.get(n, 0) + s
        # CPU time per request, in microseconds, by process (wrk counts its warm-up-free run).
        row["cpu_us_per_req"] = {n: (s / reqs * 1e6 if reqs else None) for n, s in cpu.items()}
        bus = [r["machine_busy_cores"] for r in rs if "machine_busy_cores" in r]
        row["machine_busy_cores"] = statistics.median(bus) if bus else None
        ours = [sum(r.get("cpu_s", {}).values()) / DURATION for r in rs]
        row["ours_cores"] = statistics.median(ours) if ours else None


def key(row):
    return f"{row['id']}|{row['profile']}|{row['size']}"


def find(rows, cid, profile, size):
    for r in rows:
        if r["id"] == cid and r["profile"] == profile and r["size"] == size:
            return r
    return None


def rps_of(rows, cid, profile, size):
    r = find(rows, cid, profile, size)
    return r["rps"] if r else None


def build_report(rows, info, ttfb, ttfb_statuses, memory_note, warm_notes, load_before, load_after,
                 started, elapsed, plugins):
    L = []
    L.append(f"# fleet-cache bench, {started}")
    L.append("")
    L.append(f"wrk `-t{THREADS} -c{CONNS}`, {WARMUP} s warm-up then {DURATION} s measured, "
             f"each case {REPS}× (interleaved), medians. HTTP/1.1 keep-alive, loopback only. "
             f"Envoy `--concurrency 2`, no access log. ×1 and ×2 are req/s ratios to case 1 and "
             f"case 2 of the same profile and body size.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- {info.get('nproc')} cores ({info.get('cpu', '?')}), {info.get('mem_gib', '?')} GiB, "
             f"kernel {info.get('kernel')}")
    L.append(f"- load average (1/5/15 min) before: {' / '.join(load_before)}, after: {' / '.join(load_after)}")
    busy = [r["machine_busy_cores"] for r in rows if r.get("machine_busy_cores") is not None]
    others = [r["machine_busy_cores"] - r["ours_cores"] for r in rows
              if r.get("machine_busy_cores") is not None and r.get("ours_cores") is not None]
    if busy:
        L.append(f"- during measured runs, cores busy (whole machine): median {statistics.median(busy):.2f} "
                 f"of {info.get('nproc')}; used by processes other than this bench's: median "
                 f"{statistics.median(others):.2f}, max {max(others):.2f} (a shared machine: other "
                 f"sessions' tests run here too)")
    L.append(f"- Envoy {info.get('envoy')}; {info.get('nginx')}; {info.get('wrk')}")
    L.append(f"- fleet_cache.wasm: {info.get('wasm_bytes'):,} bytes; source: {info.get('commit')}")
    L.append(f"- whole run: {elapsed:.0f} s")
    L.append("")

    for profile, title in (("fast", "Fast origin (nginx, static files)"),
                           ("slow", f"Slow origin ({SLOW_DELAY_MS} ms per response, 1 KiB): what a user gains")):
        L.append(f"## {title}")
        L.append("")
        L.append("| case | body | req/s | p50 ms | p99 ms | ×1 | ×2 | runs (req/s) | origin req | notes |")
        L.append("|---|---|---:|---:|---:|---:|---:|---|---:|---|")
        for r in [r for r in rows if r["profile"] == profile]:
            b1 = rps_of(rows, "1", profile, r["size"])
            b2 = rps_of(rows, "2", profile, r["size"])
            notes = []
            if r.get("errors"):
                notes.append(f"{r['errors']} errors/non-2xx")
            if r.get("fc_hits") is not None and (r.get("fc_hits") or r.get("fc_misses")):
                tot = (r["fc_hits"] or 0) + (r["fc_misses"] or 0)
                notes.append(f"hits {100 * (r['fc_hits'] or 0) / tot:.0f}%")
                if r.get("downstream_rq"):
                    per = r["store_rq"] / r["downstream_rq"]
                    notes.append(f"store callouts/req {per:.2f}")
                    if r["id"] in ("4", "4k") and r.get("fc_memory_hits"):
                        notes.append("**the in-proxy tier answered some hits**")
                    elif r["id"] == "4" and per < 0.9:
                        # Concurrent requests for one key share its lookup (src/outbox/mod.rs).
                        notes.append("concurrent hits shared lookups")
            if r.get("fc_store_errors"):
                notes.append(f"store errors {r['fc_store_errors']}")
            if r["id"] == "1b":
                notes.append("like-for-like baseline of case 6")
            if r["id"] == "6n":
                notes.append("case 6 without the write: lookup + forward")
            if r["id"] == "3m" and r.get("downstream_rq"):
                notes.append(f"store callouts/req {r['store_rq'] / r['downstream_rq']:.2f}")
            L.append(f"| {r['id']}. {r['label']} | {SIZE_LABEL[r['size']]} | {fmt_rps(r['rps'])} | "
                     f"{fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | {fmt_ratio(r['rps'], b1)} | "
                     f"{fmt_ratio(r['rps'], b2)} | {', '.join(fmt_rps(x) for x in r['rps_runs'])} | "
                     f"{r['origin_rq'] if r.get('origin_rq') is not None else ''} | {'; '.join(notes)} |")
        if profile == "fast" and memory_note:
            L.append(f"| 5. fleet-cache, in-proxy hit | all | n/a (not implemented) | | | | | | | {memory_note} |")
        if profile == "slow" and memory_note:
            L.append("| 5. fleet-cache, in-proxy hit | 1 KiB | n/a (not implemented) | | | | | | | |")
        L.append("")

    L.append("## Case 7: streamed response, time to first byte")
    L.append("")
    L.append(f"`{STREAM_PATH}` (5 chunks, 100 ms apart), a new cache-busting key per request, "
             f"{TTFB_N} requests per target, interleaved, curl `%{{time_starttransfer}}` (includes connecting).")
    L.append("")
    L.append("| target | median TTFB ms | p90 ms | n |")
    L.append("|---|---:|---:|---:|")
    for k, v in ttfb.items():
        L.append(f"| {k} | {fmt_ms(v['median_ms'])} | {fmt_ms(v['p90_ms'])} | {v['n']} |")
    L.append("")
    L.append(f"fleet-cache answered these with cache-status: {', '.join(ttfb_statuses) or '(none)'}.")
    L.append("")

    ctx = [r for r in rows if r["profile"] == "context"]
    if ctx:
        L.append("## Context: the pieces alone (no Envoy)")
        L.append("")
        L.append("| what | body | req/s | p50 ms | p99 ms | runs (req/s) |")
        L.append("|---|---|---:|---:|---:|---|")
        for r in ctx:
            L.append(f"| {r['label']} | {SIZE_LABEL[r['size']]} | {fmt_rps(r['rps'])} | {fmt_ms(r['p50'])} | "
                     f"{fmt_ms(r['p99'])} | {', '.join(fmt_rps(x) for x in r['rps_runs'])} |")
        L.append("")

    # Where the CPU goes.
    L.append("## CPU per request (µs, summed over measured runs, by process)")
    L.append("")
    procs = ["envoy", "nginx", "slow_origin", "webdis", "redis", "wrk"]
    L.append("| case | body | " + " | ".join(procs) + " | total |")
    L.append("|---|---|" + "---:|" * (len(procs) + 1))
    for r in rows:
        if r["profile"] != "fast" or not r.get("cpu_us_per_req"):
            continue
        c = {("envoy" if n.startswith("envoy-") else n): v for n, v in r["cpu_us_per_req"].items()}
        tot = sum(v for v in c.values() if v is not None)
        L.append(f"| {r['id']}. {r['label']} | {SIZE_LABEL[r['size']]} | " +
                 " | ".join(f"{c[p]:.0f}" if c.get(p) is not None else "" for p in procs) + f" | {tot:.0f} |")
    L.append("")

    # Case 4k: every hit reads Redis (1,000 keys, no lookup shared); case 4's one hot key
    # shares lookups between concurrent hits.
    c4 = find(rows, "4k", "fast", "1k") or find(rows, "4", "fast", "1k")
    w1 = find(rows, "ctx-webdis", "context", "1k")
    c3 = find(rows, "3", "fast", "1k")
    where = []
    if c4 and c4.get("rps") and c4.get("cpu_us_per_req"):
        cu = {("envoy" if n.startswith("envoy-") else n): v for n, v in c4["cpu_us_per_req"].items()}
        parts = [f"Envoy {cu.get('envoy', 0):.0f} µs", f"Webdis {cu.get('webdis', 0):.0f} µs",
                 f"Redis {cu.get('redis', 0):.0f} µs", f"wrk {cu.get('wrk', 0):.0f} µs"]
        where.append(f"- CPU per Redis hit (case {c4['id']}): {', '.join(parts)}.")
        if c4.get("store_rq") and c4.get("downstream_rq"):
            where.append(f"- Lookups per store callout in case {c4['id']}: "
                         f"{c4['downstream_rq'] / c4['store_rq']:.1f} (batched by the filter).")
        if c3 and c3.get("cpu_us_per_req"):
            e3 = next((v for n, v in c3["cpu_us_per_req"].items() if n.startswith("envoy-")), None)
            if e3:
                where.append(f"- Envoy alone answering a local reply (case 3) costs {e3:.0f} µs: the "
                             f"filter's hit path adds about {cu.get('envoy', 0) - e3:.0f} µs of Envoy CPU "
                             f"(callout, Wasm, entry decoding, reply).")
        if w1 and w1.get("rps"):
            where.append(f"- Webdis answering the filter's one-key lookup directly to wrk: {w1['rps']:,.0f} req/s "
                         f"(p50 {fmt_ms(w1['p50'])} ms), vs {c4['rps']:,.0f} req/s for hits through "
                         f"Envoy + Webdis ({c4['rps'] / w1['rps']:.2f}×). On 2 shared cores the processes "
                         f"compete for CPU: the totals above are what bounds req/s.")

    def cpu_of(cid):
        r = find(rows, cid, "fast", "1k")
        if not r or not r.get("cpu_us_per_req"):
            return None
        return {("envoy" if n.startswith("envoy-") else n): (v or 0) for n, v in r["cpu_us_per_req"].items()}

    # Misses: plain proxying, the naive floor (two callouts, no cache logic), fleet-cache's.
    misses = [(what, cpu_of(cid)) for cid, what in (
        ("1b", "proxying alone (1b)"),
        ("3m", "a naive miss's lookup and write callouts, no cache logic (3m)"),
        ("6n", "fleet-cache's lookup (6n)"),
        ("6", "fleet-cache's lookup and write (6)"))]
    misses = [(what, c) for what, c in misses if c]
    if len(misses) >= 2:
        where.append("- Misses, CPU per request: " + "; ".join(
            f"{what}: Envoy {c.get('envoy', 0):.0f} µs, Webdis + Redis "
            f"{c.get('webdis', 0) + c.get('redis', 0):.0f} µs" for what, c in misses) + ".")
    # Hits answered in the proxy: the host calls alone (3c), plus a shared-data read (3s),
    # fleet-cache's per-worker tier (5); Envoy CPU per request at each size.
    def envoy_us(cid, tag):
        r = find(rows, cid, "fast", tag)
        if not r or not r.get("cpu_us_per_req"):
            return None
        return next((v for n, v in r["cpu_us_per_req"].items() if n.startswith("envoy-") and v), None)

    hits = []
    for tag, _ in SIZES:
        e3c, e3s, e5 = envoy_us("3c", tag), envoy_us("3s", tag), envoy_us("5", tag)
        if e3c is not None and e3s is not None:
            part = f"{SIZE_LABEL[tag]}: 3c {e3c:.0f} µs, 3s {e3s:.0f} µs ({e3s - e3c:+.0f} µs)"
            if e5 is not None:
                part += f", 5 {e5:.0f} µs ({e5 - e3c:+.0f} µs)"
            hits.append(part)
    if hits:
        where.append("- In-proxy hits, Envoy CPU per request (difference to 3c, the host calls alone): "
                     + "; ".join(hits) + ". 3s − 3c is what a shared-data read and its copy into the VM "
                     "cost, before any decoding.")
    if where:
        L.append("## Where the time goes (1 KiB, CPU per request from the table above)")
        L.append("")
        L.extend(where)
        L.append("")

    L.append("## Targets")
    L.append("")
    checks = target_checks(rows, ttfb, info)
    for name, ok, detail in checks:
        mark = {True: "met", False: "not met", "info": "info"}.get(ok, "n/a")
        L.append(f"- **{mark}**: {name}: {detail}")
    L.append("")
    L.append("## Configurations")
    L.append("")
    L.append("Envoy configs, nginx.conf and logs of the last run: `target/bench/run/`. fleet-cache's "
             "Envoy config is `envoy/envoy.yaml` rendered; the plugin configurations:")
    L.append("")
    ours = "memory" if "memory" in plugins else "redis"
    L.append(f"- case 4 (Redis hit): `{json.dumps(plugins['redis'])}`")
    if "memory" in plugins:
        L.append(f"- case 5 (in-proxy hit): `{json.dumps(plugins['memory'])}`")
    L.append(f"- cases 6 and 7 (misses): the configuration of case {4 if ours == 'redis' else 5}")
    if info.get("floor_wasm_bytes"):
        L.append(f"- case 3w (proxy-wasm floor): `bench/floor/` (no configuration; floor.wasm "
                 f"{info['floor_wasm_bytes']:,} bytes), the Envoy of case 1 with this filter before the router")
        L.append("- case 3c: the same filter configured `cache-hit`: it reads all request headers and the "
                 "clock and replies with the headers a replayed response carries (10), as any cache hit must")
        L.append("- case 3s: the same filter configured `shared-data-hit`: 3c's host calls plus, before "
                 "replying, one `proxy_get_shared_data` of `floor:<path>` (Envoy's process-wide map; the "
                 "host copies the value into the VM), whose bytes are the reply's body. Every VM stores "
                 "the three bodies in `on_configure`, so every request is a shared-data hit (a missing "
                 "value answers 500). Nothing is decoded: the floor of a shared-data tier, which would "
                 "also decode and validate its entry on every hit")
        L.append("- case 3m: the same filter configured `cache-miss`, plus envoy/envoy.yaml's "
                 "`fleet_cache_store` cluster: per request it reads all request headers and the clock, "
                 "sends one lookup to Webdis (`GET /GET/floor%3A<path>.raw`) and waits for it, reads all "
                 "response headers, copies the body as it streams through, and at its end sends one write "
                 "(`PUT /SET/floor%3A<path>.raw`, not waited for; Webdis' ACL gets SET added for the bench "
                 "only; no TTL, as a PUT value can't be followed by `PX`)")
    L.append("")
    if warm_notes:
        L.append("## Warm-up checks")
        L.append("")
        for n in warm_notes:
            L.append(f"- {n}")
        L.append("")
    return "\n".join(L) + "\n", checks


def target_checks(rows, ttfb, info):
    out = []
    c5 = rps_of(rows, "5", "fast", "1k")
    c2 = rps_of(rows, "2", "fast", "1k")
    c3 = rps_of(rows, "3", "fast", "1k")
    c4 = rps_of(rows, "4", "fast", "1k")
    c1 = rps_of(rows, "1", "fast", "1k")
    c6 = rps_of(rows, "6", "fast", "1k")
    c1b = rps_of(rows, "1b", "fast", "1k")
    c3w = rps_of(rows, "3w", "fast", "1k")
    c3c = rps_of(rows, "3c", "fast", "1k")
    c4k = rps_of(rows, "4k", "fast", "1k")
    c3m = rps_of(rows, "3m", "fast", "1k")

    def ratio_check(name, a, b, floor, what):
        if a is None or b is None:
            out.append((name, None, f"{what}: not measured"))
        else:
            out.append((name, a / b >= floor, f"{what} = {a:,.0f} / {b:,.0f} = {a / b:.2f} (target ≥ {floor:.2f})"))

    ratio_check("in-proxy hit ≥ 1.0× built-in cache hit, 1 KiB", c5, c2, 1.0, "case 5 / case 2")
    ratio_check("in-proxy hit within a few percent of direct_response, 1 KiB", c5, c3, 0.95,
                "case 5 / case 3")
    ratio_check("Redis hit ≥ 1.0× plain proxying, 1 KiB", c4, c1, 1.0, "case 4 / case 1")
    for tag in JSON_SIZES:
        ratio_check(f"Redis hit ≥ 1.0× plain proxying, JSON {SIZE_LABEL[tag]}",
                    rps_of(rows, "4j", "fast", tag), rps_of(rows, "1j", "fast", tag), 1.0,
                    "case 4j / case 1j")
    for tag, ratio in sorted(info.get("stored_ratio", {}).items()):
        out.append((f"stored bytes per JSON entry ≤ 0.3× the body, {SIZE_LABEL[tag]}", ratio <= 0.3,
                    f"{ratio:.3f}× (the entry's bytes in Redis over the body's)"))

    def info_ratio(name, a, b, what):
        # Not a target: where the proxy-wasm floor (case 3w) lies, the best any Wasm filter can do.
        if a is None or b is None:
            out.append((name, "info", f"{what}: not measured"))
        else:
            out.append((name, "info", f"{what} = {a:,.0f} / {b:,.0f} = {a / b:.2f}"))

    info_ratio("proxy-wasm floor vs built-in (3w/2), 1 KiB", c3w, c2,
               "case 3w / case 2 (a minimal proxy-wasm filter's local reply against Envoy's built-in cache hit)")
    info_ratio("in-proxy hit vs floor (5/3w), 1 KiB", c5, c3w,
               "case 5 / case 3w (informational: 3w is the best any proxy-wasm filter can do here)")
    info_ratio("cache-shaped floor vs built-in (3c/2), 1 KiB", c3c, c2,
               "case 3c / case 2 (a filter making only the host calls of a cache hit)")
    info_ratio("in-proxy hit vs cache-shaped floor (5/3c), 1 KiB", c5, c3c,
               "case 5 / case 3c (what the cache's own work in the VM costs)")
    # Case 3s: a shared-data tier's floor (one host read and copy per hit, no decoding), at every
    # size, since the copy grows with the body.
    for tag, _ in SIZES:
        c3c_s = rps_of(rows, "3c", "fast", tag)
        c3s_s = rps_of(rows, "3s", "fast", tag)
        c5_s = rps_of(rows, "5", "fast", tag)
        info_ratio(f"shared-data floor vs cache-shaped floor (3s/3c), {SIZE_LABEL[tag]}", c3s_s, c3c_s,
                   "case 3s / case 3c (what a shared-data read costs a hit, before any decoding)")
        info_ratio(f"in-proxy hit vs shared-data floor (5/3s), {SIZE_LABEL[tag]}", c5_s, c3s_s,
                   "case 5 / case 3s (above 1: fleet-cache's per-worker hit beats even an undecoded "
                   "shared-data read)")
    info_ratio("Redis hit over 1,000 keys vs plain proxying (4k/1), 1 KiB", c4k, c1,
               "case 4k / case 1 (no lookup shared, only batched)")
    info_ratio("miss-shaped floor vs plain proxying (3m/1b), 1 KiB", c3m, c1b,
               "case 3m / case 1b (what two naive store callouts per miss cost, no cache logic)")
    info_ratio("fleet-cache miss vs miss-shaped floor (6/3m), 1 KiB", c6, c3m,
               "case 6 / case 3m (above 1: fleet-cache's batching beats naive callouts)")
    if c6 is not None and c1 is not None:
        extra = ""
        if c1b:
            extra = (f"; against the same cache-busting wrk script through plain Envoy (1b): "
                     f"{c6:,.0f} / {c1b:,.0f} = {c6 / c1b:.2f}")
        out.append(("miss overhead ≤ 5% of req/s", c6 / c1 >= 0.95,
                    f"case 6 / case 1 = {c6:,.0f} / {c1:,.0f} = {c6 / c1:.2f} (target ≥ 0.95){extra}"))
    else:
        out.append(("miss overhead ≤ 5% of req/s", None, "not measured"))
    a = ttfb.get("Envoy + fleet-cache (miss)", {}).get("median_ms")
    b = ttfb.get("Envoy, no filter", {}).get("median_ms")
    if a is not None and b is not None:
        out.append(("streamed TTFB: ≤ 1 ms added", a - b <= 1.0,
                    f"{a:.2f} ms with the filter − {b:.2f} ms without = {a - b:+.2f} ms"))
    else:
        out.append(("streamed TTFB: ≤ 1 ms added", None, "not measured"))
    w = info["wasm_bytes"]
    out.append(("release .wasm ≤ 400 KB", w <= WASM_SIZE_TARGET,
                f"{w:,} bytes (target ≤ {WASM_SIZE_TARGET:,})"))
    return out


def chart(rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fast", "1k", "fast origin, 1 KiB"), ("fast", "64k", "fast origin, 64 KiB"),
              ("fast", "1m", "fast origin, 1 MiB"), ("slow", "1k", f"slow origin ({SLOW_DELAY_MS} ms), 1 KiB")]
    colors = {"1": "#888888", "1b": "#bbbbbb", "6n": "#b3a7d6", "2": "#4c72b0", "3": "#55a868", "3w": "#8fd19e",
              "3c": "#b5e0c0", "3s": "#2f8f6f", "3m": "#d4edda",
              "4": "#dd8452", "4k": "#f0b27a", "5": "#c44e52", "5k": "#e08a8d", "6": "#8172b3"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (profile, size, title) in zip(axes.flat, panels):
        rs = [r for r in rows if r["profile"] == profile and r["size"] == size and r.get("rps")]
        labels = [f"{r['id']}. {r['label']}".replace(" (", "\n(").replace(", ", ",\n", 1) for r in rs]
        vals = [r["rps"] for r in rs]
        bars = ax.barh(range(len(rs)), vals, color=[colors.get(r["id"], "#999999") for r in rs])
        ax.set_yticks(range(len(rs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("req/s (median)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        top = max(vals) if vals else 1
        for b, r in zip(bars, rs):
            ax.text(b.get_width() + top * 0.01, b.get_y() + b.get_height() / 2,
                    f"{r['rps']:,.0f}  p99 {fmt_ms(r['p99'])} ms", va="center", fontsize=7)
        ax.set_xlim(0, top * 1.45)
    fig.suptitle("fleet-cache bench (wrk -t%d -c%d, medians of %d runs)" % (THREADS, CONNS, REPS), fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def main():
    t_start = time.time()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{os.getpid()}"
    for path, what in ((ENVOY, "Envoy (scripts/setup.sh)"), (WASM, "the filter (make build)"),
                       (ORIGIN_BIN, "demo_origin (make build)")):
        if not os.path.exists(path):
            raise SystemExit(f"bench: {what} missing: {path}")
    for tool in ("wrk", "curl", "redis-server", "redis-cli", "webdis"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} missing (bench/setup.sh installs it)")
    os.makedirs(RUN, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    PROCS.cleanup_stale()
    ports = [NGINX_PORT, SLOW_PORT, REDIS_PORT, WEBDIS_PORT] + [p for pp in ENVOY_PORTS.values() for p in pp]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise SystemExit(f"bench: ports in use by something else: {busy}")

    floor = want_floor()
    if floor:
        build_floor()
    info = machine_info()
    load_before = loadavg()
    log(f"{info['nproc']} cores, load average {' '.join(load_before)}; results in bench/results/")

    start_backends(webdis_set=floor and (not ONLY or "3m" in ONLY))
    cfgs = envoy_configs(floor)
    for name, yaml in cfgs.items():
        start_envoy(name, yaml)
    memory_note = ""
    plugins = {"redis": PLUGIN_REDIS_ONLY, "memory": PLUGIN_MEMORY}
    for name in cfgs:
        if not envoy_ready(name):
            why = envoy_log_tail(name)
            if name == "redis":
                # A build without the in-proxy tier refuses `memory`: it needs no switching off.
                log(f"case 4: Envoy refused {json.dumps(PLUGIN_REDIS_ONLY)} ({why[:200]}); "
                    f"retrying with {json.dumps(PLUGIN_REDIS)}")
                PROCS.stop("envoy-redis")
                start_envoy("redis", ours_yaml("redis", PLUGIN_REDIS))
                plugins["redis"] = PLUGIN_REDIS
                if envoy_ready("redis"):
                    continue
                why = envoy_log_tail(name)
            if name == "memory":
                memory_note = f"Envoy refused the config with `memory` ({why[:300]})"
                log(f"case 5 n/a: {memory_note}")
                PROCS.stop(f"envoy-{name}")
                continue
            raise SystemExit(f"bench: Envoy '{name}' did not become ready: {why}")
    memory_ok = not memory_note
    if not memory_ok:
        plugins.pop("memory")

    rows = case_rows(memory_ok)
    warm_notes = []
    # Warm the caches and check each hit case really hits.
    for row in rows:
        if row["id"] == "3m":
            warm_notes.append(check_floor_miss(row, run_id))
            continue
        if row["kind"] != "get":
            continue
        if row["id"] in ("4", "5", "4j"):
            ok, detail = warm_ours(row["url"])
            warm_notes.append(f"case {row['id']} {row['profile']} {SIZE_LABEL[row['size']]}: cache-status `{detail}`")
            if not ok:
                if row["id"] == "5":
                    memory_note = memory_note or f"no hit after warm-up: cache-status `{detail}`"
                    row["skip"] = True
                    continue
                raise SystemExit(f"bench: case 4 never hits ({row['url']}): cache-status {detail}")
        elif row["id"] == "2":
            ok, detail = warm_builtin(row["url"])
            warm_notes.append(f"case 2 {row['profile']} {SIZE_LABEL[row['size']]}: {detail}")
            if not ok:
                raise SystemExit(f"bench: built-in cache never hits ({row['url']}): {detail}")
        else:
            st, h, body = http_get(row["url"], 10)
            if st != 200:
                # Case 3s says why (no shared data under the key) in `floor-error`.
                why = f": {h['floor-error']}" if h.get("floor-error") else ""
                raise SystemExit(f"bench: {row['url']} answered {st}{why}")
            if row["size"] in dict(SIZES) and row["id"] in ("1", "3", "3w", "3c", "3s") and row["profile"] == "fast" \
                    and len(body) != dict(SIZES)[row["size"]]:
                raise SystemExit(f"bench: {row['url']} returned {len(body)} bytes")
    if any(r.get("skip") for r in rows):
        rows = [r for r in rows if not r.get("skip")]
        if all(r["id"] != "5" for r in rows) and not memory_note:
            memory_note = "no hit after warm-up"

    total = len(rows) * REPS
    log(f"{len(rows)} cases × {REPS} runs, about {total * (WARMUP + DURATION + 0.5) / 60:.1f} min")
    runs = {}
    n = 0
    for rep in range(REPS):
        for row in rows:
            n += 1
            r = run_one(row, rep, run_id)
            runs.setdefault(key(row), []).append(r)
            log(f"[{n}/{total}] {row['id']:>10} {row['profile']:<7} {row['size']:<3} "
                f"{fmt_rps(r.get('rps')):>8} req/s  p50 {fmt_ms(r.get('p50'))} ms  p99 {fmt_ms(r.get('p99'))} ms"
                + (f"  (errors {r['non2xx'] + r['sock_errors']})" if r.get("non2xx") or r.get("sock_errors") else "")
                + (f"  WRK FAILED: {r['error'][:200]}" if r.get("error") else ""))

    info["stored_ratio"] = stored_ratios(run_id)
    ttfb, ttfb_statuses = ({}, [])
    if not ONLY or "7" in ONLY:
        log(f"case 7: time to first byte, {TTFB_N} streamed requests per target")
        ttfb, ttfb_statuses = measure_ttfb(run_id, "memory" if memory_ok else "redis")
    load_after = loadavg()
    aggregate(rows, runs)
    report, checks = build_report(rows, info, ttfb, ttfb_statuses, memory_note, warm_notes, load_before,
                                  load_after, started, time.time() - t_start, plugins)
    md = os.path.join(RESULTS, f"{stamp}.md")
    write(md, report)
    write(os.path.join(RESULTS, "latest.md"), report)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump({"started": started, "machine": info, "load_before": load_before, "load_after": load_after,
                   "rows": rows, "runs": runs, "ttfb": ttfb, "memory_note": memory_note,
                   "checks": [{"target": c[0], "met": None if c[1] == "info" else c[1],
                               "informational": c[1] == "info", "detail": c[2]} for c in checks]},
                  f, indent=1, default=str)
    try:
        chart(rows, os.path.join(RESULTS, "latest.png"))
    except ImportError:
        log("matplotlib missing (bench/setup.sh installs it): no chart")
    print()
    print(report)
    log(f"wrote {os.path.relpath(md, ROOT)}, bench/results/latest.md, latest.png, latest.json")


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        PROCS.stop_all()
