#!/usr/bin/env bash
# Builds release binaries and runs the svc-proxy benchmark (src/bin/proxy_bench.rs) in the VM
# (Debian's kernel, IPVS); prints its tables. Extra arguments go to proxy_bench (e.g. --sizes 1000).
#   bench/proxy/run.sh [--sizes 1000,10000] [--latency-sizes 100,10000] [--trials 10]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release -p svc-proxy >&2
cargo build --release -p node-bench --bin proxy_bench >&2
export BENCH_BIN=$target/release BENCH_ARGS="$*"
VM_ENV="BENCH_BIN BENCH_ARGS" VM_MEM=${VM_MEM:-2048} exec tests/vm/run.sh --timeout "${BENCH_TIMEOUT:-7200}" bench/proxy/in-vm.sh
