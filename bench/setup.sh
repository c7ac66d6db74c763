#!/usr/bin/env bash
# Installs what `make bench` needs on top of scripts/setup.sh (which `make build` already ran):
# Debian's nginx-light (the fast origin), wrk (the load generator), curl, linux-perf (`make
# profile`), and matplotlib in .venv (the chart). Kept out of scripts/setup.sh so `make test`
# stays lean.
# Idempotent: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
MATPLOTLIB_VERSION=3.10.7

need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
# perf (cpu-clock samples) for `make profile`; without it the profile reports CPU per process only.
command -v perf >/dev/null || need_apt+=(linux-perf)
if ((${#need_apt[@]})); then
  echo "bench setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Other sessions on a shared machine may hold the dpkg lock for a while.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's nginx package starts a system nginx on :80 on install: we run our own on loopback
# ports, so stop the system one (it only takes CPU and a port).
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bench setup: python3 -m venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import matplotlib' >/dev/null 2>&1; then
  echo "bench setup: pip install matplotlib==$MATPLOTLIB_VERSION"
  "$VENV/bin/pip" install -q "matplotlib==$MATPLOTLIB_VERSION"
fi
