#!/usr/bin/env bash
# `make stop`: stops what `make run` started, by the PIDs it recorded.
set -uo pipefail
cd "$(dirname "$0")/.."
for f in .run/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $(basename "$f" .pid) (pid $pid)"
  fi
  rm -f "$f"
done
