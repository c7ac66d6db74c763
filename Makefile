# fleet-cache: `make run` to try it, `make test` for everything. Both install what they need
# (scripts/setup.sh) on a fresh Debian machine, as root.
WASM := target/wasm32-wasip1/release/fleet_cache.wasm

.PHONY: all setup build run stop test unit integration lint fmt clean

all: build

setup:
	@scripts/setup.sh

# The filter Envoy loads, and the demo origin `make run` starts.
# scripts/shrink-wasm.sh (binaryen, installed by scripts/setup.sh) shrinks the release .wasm in
# place: unused SDK exports dropped, then wasm-opt -O3 (issue 5: within 400 KB, hit path no
# slower). cargo puts its own artifact back at $(WASM) on every build, so this runs each time
# (~5 s); the hash of what it wrote, kept beside the .wasm, stops a file from being shrunk
# twice (a second pass still changes it, and the build would not be stable).
build: setup
	cargo build --release --target wasm32-wasip1
	@if [ "$$(sha256sum < $(WASM))" != "$$(cat $(WASM).opt-sha256 2>/dev/null)" ]; then \
		echo "scripts/shrink-wasm.sh $(WASM)"; \
		scripts/shrink-wasm.sh $(WASM) && \
		sha256sum < $(WASM) > $(WASM).opt-sha256; \
	fi
	cargo build --release --example demo_origin
	@ls -l $(WASM)

run: build
	@scripts/run.sh

stop:
	@scripts/stop.sh

# Everything CI runs: style, lints (native and wasm), unit tests, integration tests against
# real Envoy, Webdis and Redis.
test: build lint unit integration

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 --lib -- -D warnings

unit:
	cargo test --lib

# Each integration test starts its own Redis, Webdis and Envoy on free ports; most of their
# time is spent waiting, so more threads than cores is fine.
integration: build
	cargo test --test '*' -- --test-threads 4

fmt:
	cargo fmt

clean:
	cargo clean

# ---------------------------------------------------------------------------------------------
# Istio (istio/, README "Deploy on Istio"): the filter as an OCI image a WasmPlugin pulls, and
# schema checks of the manifests.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
OCI_TAG ?= $(VERSION)
OCI_LAYOUT := target/oci/fleet-cache

.PHONY: oci oci-push manifests-check

# An OCI image layout (Wasm image "compat" variant: one tar+gzip layer holding plugin.wasm),
# written as plain files by scripts/oci.py: no Docker engine. Prints the manifest digest.
oci: build
	@digest=$$(python3 scripts/oci.py --wasm $(WASM) --out $(OCI_LAYOUT) --tag $(OCI_TAG)) && \
		echo "$(OCI_LAYOUT):$(OCI_TAG) $$digest"

# make oci-push REGISTRY=registry.example.com/team [OCI_TAG=0.1.0] [OCI_PUSH_FLAGS=--dest-creds=u:p]
# pushes <REGISTRY>/fleet-cache:<tag> with skopeo, digests unchanged (installs skopeo if missing).
oci-push: oci
	@test -n "$(REGISTRY)" || { echo "usage: make oci-push REGISTRY=<registry>/<path> [OCI_TAG=$(OCI_TAG)]" >&2; exit 2; }
	@command -v skopeo >/dev/null || { echo "setup: apt-get install skopeo"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null; }
	skopeo copy --preserve-digests --digestfile target/oci/pushed.digest $(OCI_PUSH_FLAGS) \
		oci:$(OCI_LAYOUT):$(OCI_TAG) docker://$(REGISTRY)/fleet-cache:$(OCI_TAG)
	@echo "pushed oci://$(REGISTRY)/fleet-cache:$(OCI_TAG) (pin: oci://$(REGISTRY)/fleet-cache@$$(cat target/oci/pushed.digest))"

# Every manifest in istio/ against its schema, without a cluster: the Kubernetes objects each
# kustomization renders (istio/, istio/cluster/; kustomize build) with kubernetes-validate
# (strict: unknown fields fail), the WasmPlugins with Istio's CRD schema from
# @kubernetes-models/istio (plus an unknown-field check). Each checker also proves it rejects a
# misspelt field. Tools: .venv (kustomize in it) and scripts/manifests/node_modules
# (scripts/setup.sh).
manifests-check: setup
	.venv/bin/python scripts/manifests/check_k8s.py istio
	node scripts/manifests/check_istio.mjs istio

test: manifests-check

# monitoring/'s alert rules: valid (promtool check), and each alert firing on its condition and
# silent where it must be (promtool test, monitoring/alerts_test.yaml). tests/monitoring.rs
# then runs them, and the dashboard's queries, on a real Prometheus scraping a real Envoy.
.PHONY: monitoring-check
monitoring-check: setup
	promtool check rules monitoring/alerts.yaml
	promtool test rules monitoring/alerts_test.yaml

test: monitoring-check

# Benchmark (bench/README.md): starts nginx, a slow origin, Redis, Webdis and one Envoy per case
# on 127.0.0.1:23000-23999, measures with wrk (about 8 minutes), stops them by PID, and writes
# bench/results/<timestamp>.md, latest.md and latest.png. bench/setup.sh installs nginx-light,
# wrk and matplotlib (.venv) if missing. Not part of `make test`: CI times nothing.
.PHONY: bench
bench: build
	@bench/setup.sh
	.venv/bin/python bench/bench.py
	.venv/bin/python bench/protect.py
	.venv/bin/python bench/capacity.py

# Where a Redis hit's CPU goes (bench/profile.py): CPU per request by process, and Envoy's and
# Webdis' by what code ran (perf's cpu-clock samples), against plain proxying and an in-proxy
# hit. `make profile PROFILE_SIZE=64k` for another size (1k, 64k, 1m). About a minute.
.PHONY: profile
profile: build
	@bench/setup.sh
	PROFILE_SIZE="$(PROFILE_SIZE)" .venv/bin/python bench/profile.py

# Two builds side by side in one run (bench/ab.py): `make bench-ab B=<other.wasm>` (A defaults
# to the build `make build` makes; A=<path> for another). About 2 minutes per case.
.PHONY: bench-ab
bench-ab: build
	@bench/setup.sh
	A="$(A)" B="$(B)" .venv/bin/python bench/ab.py
