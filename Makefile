# fleet-cache: `make run` to try it, `make test` for everything. Both install what they need
# (scripts/setup.sh) on a fresh Debian machine, as root.
WASM := target/wasm32-wasip1/release/fleet_cache.wasm

.PHONY: all setup build run stop test unit integration lint fmt clean

all: build

setup:
	@scripts/setup.sh

# The filter Envoy loads, and the demo origin `make run` starts.
build: setup
	cargo build --release --target wasm32-wasip1
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
