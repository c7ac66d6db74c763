#!/usr/bin/env bash
# `make run`: starts Redis, Webdis, the demo origin and Envoy with the cache filter on
# 127.0.0.1, then shows a MISS and a HIT. `make stop` (scripts/stop.sh) stops them by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/.run
ENVOY=$ROOT/.venv/envoy
WASM=$ROOT/target/wasm32-wasip1/release/fleet_cache.wasm
ORIGIN_BIN=${ORIGIN_BIN:-$ROOT/target/release/examples/demo_origin}

LISTEN_PORT=${LISTEN_PORT:-10000}
ADMIN_PORT=${ADMIN_PORT:-9901}
ORIGIN_PORT=${ORIGIN_PORT:-18080}
WEBDIS_PORT=${WEBDIS_PORT:-17379}
REDIS_PORT=${REDIS_PORT:-16379}

if [ -d "$RUN" ] && ls "$RUN"/*.pid >/dev/null 2>&1; then
  echo "run: stopping the previous run first"
  scripts/stop.sh
fi
mkdir -p "$RUN"

# Start one server detached (its own session, so it outlives this script) and keep its PID.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_for() {
  local what=$1 cmd=$2
  for _ in $(seq 1 100); do
    if eval "$cmd" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "run: $what did not come up; its log:" >&2
  tail -n 30 "$RUN/$what.log" >&2 || true
  exit 1
}

start redis redis-server envoy/redis.conf --port "$REDIS_PORT" --dir "$RUN"
wait_for redis "redis-cli -p $REDIS_PORT ping | grep -q PONG"

sed -e "s|{{REDIS_PORT}}|$REDIS_PORT|; s|{{WEBDIS_PORT}}|$WEBDIS_PORT|; s|{{WEBDIS_LOG}}|$RUN/webdis.log|" \
  envoy/webdis.json >"$RUN/webdis.json"
start webdis webdis "$RUN/webdis.json"
wait_for webdis "curl -sf http://127.0.0.1:$WEBDIS_PORT/PING"

start origin "$ORIGIN_BIN" "$ORIGIN_PORT"
wait_for origin "curl -sf http://127.0.0.1:$ORIGIN_PORT/hello"

PLUGIN_CONFIG=$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))' <<'JSON'
{
  "store": { "cluster": "fleet_cache_store", "authority": "webdis", "timeout_ms": 100 },
  "namespace": "demo",
  "default_ttl_s": 0,
  "max_ttl_s": 3600,
  "cache_name": "fleet-cache",
  "event_stream_ignores_no_cache": true,
  "purge": { "token": "demo-purge-token-change-me" }
}
JSON
)
python3 - "$RUN/envoy.yaml" <<PY
import sys
t = open("envoy/envoy.yaml").read()
for k, v in {"LISTEN_PORT": "$LISTEN_PORT", "ADMIN_PORT": "$ADMIN_PORT",
             "ORIGIN_PORT": "$ORIGIN_PORT", "WEBDIS_PORT": "$WEBDIS_PORT",
             "WASM_PATH": "$WASM", "PLUGIN_CONFIG": r'''$PLUGIN_CONFIG'''}.items():
    t = t.replace("{{" + k + "}}", v)
open(sys.argv[1], "w").write(t)
PY
start envoy "$ENVOY" -c "$RUN/envoy.yaml" --disable-hot-restart --concurrency 2 \
  --log-level info --component-log-level wasm:${WASM_LOG_LEVEL:-info}
wait_for envoy "curl -sf http://127.0.0.1:$ADMIN_PORT/ready"

URL=http://127.0.0.1:$LISTEN_PORT/hello
echo
echo "First request (nothing cached yet):"
curl -s -D - -o /dev/null "$URL" | grep -i -E '^(HTTP|cache-status|age)'
# The filter publishes the recording from its root context right after the response ends.
for _ in $(seq 1 20); do
  if curl -s -D - -o /dev/null "$URL" | grep -qi 'cache-status:.*hit'; then break; fi
  sleep 0.1
done
echo "Second request (served from the shared cache):"
curl -s -D - -o /dev/null "$URL" | grep -i -E '^(HTTP|cache-status|age)'
cat <<EOF

fleet-cache is running:
  send requests to   http://127.0.0.1:$LISTEN_PORT/   (e.g. /hello, /stream: a chunked SSE stream)
  as a browser would curl -N -H 'Accept: text/event-stream' -H 'Cache-Control: no-cache' http://127.0.0.1:$LISTEN_PORT/stream
                     (served from the cache once stored: event_stream_ignores_no_cache)
  Envoy admin/stats  http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep fleet_cache
  purge a URL        curl -X PURGE -H 'x-purge-token: demo-purge-token-change-me' http://127.0.0.1:$LISTEN_PORT/hello
  logs and PIDs in   $RUN/
  stop with          make stop
EOF
