#!/bin/bash
# Shrinks the release .wasm in place (`make build` runs it once per cargo artifact; see the
# Makefile). Issue 5's target is a .wasm within 400 KB, and neither step slows the hit path.
#
# 1. wasm-metadce keeps only the exports scripts/wasm-exports.json lists. The proxy-wasm SDK
#    also exports the gRPC, network-filter and foreign-function callbacks; an HTTP filter that
#    makes no gRPC calls never gets them, and the host (proxy-wasm-cpp-host) skips a callback
#    the module does not export. ~15 KB. The exports it drops must be exactly DROPPED below:
#    an SDK upgrade that adds a callback fails the build here instead of losing it quietly.
# 2. wasm-opt -O3: ~50 KB (A/B record: bench/results/20261125-032949-ab-size-*.md).
#    The features are rustc's wasm32-wasip1 defaults, listed because the stripped artifact no
#    longer says them.
set -euo pipefail
wasm=$1
here=$(dirname "$0")
features=(--enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int
  --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-extended-const)
# In C order (LC_ALL=C sort below).
DROPPED="proxy_on_downstream_connection_close
proxy_on_downstream_data
proxy_on_foreign_function
proxy_on_grpc_close
proxy_on_grpc_receive
proxy_on_grpc_receive_initial_metadata
proxy_on_grpc_receive_trailing_metadata
proxy_on_new_connection
proxy_on_upstream_connection_close
proxy_on_upstream_data"

trap 'rm -f "$wasm.dce" "$wasm.tmp"' EXIT
report=$(wasm-metadce "${features[@]}" -f "$here/wasm-exports.json" "$wasm" -o "$wasm.dce") || {
  echo "shrink-wasm: wasm-metadce failed on $wasm" >&2
  exit 1
}
dropped=$(sed -n 's/^unused: export\$\([A-Za-z0-9_]*\)\$.*/\1/p' <<<"$report" | LC_ALL=C sort)
if [ "$dropped" != "$DROPPED" ]; then
  echo "shrink-wasm: wasm-metadce would drop other exports than expected." >&2
  echo "expected:" >&2; echo "$DROPPED" >&2
  echo "dropped:" >&2; echo "$dropped" >&2
  echo "Review scripts/wasm-exports.json (kept) and DROPPED in $0 against the SDK." >&2
  exit 1
fi
wasm-opt -O3 --strip-debug --strip-producers "${features[@]}" "$wasm.dce" -o "$wasm.tmp" || {
  echo "shrink-wasm: wasm-opt failed on $wasm" >&2
  exit 1
}
mv "$wasm.tmp" "$wasm"
