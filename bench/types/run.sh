#!/usr/bin/env bash
# Builds release binaries and runs the Service-types benchmark (src/bin/types_bench.rs) in the VM
# (Debian's kernel, IPVS); prints its tables. Extra arguments go to types_bench.
#   bench/types/run.sh [--census 10,1000] [--first-sync 10000] [--settle 10]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release -p svc-proxy >&2
cargo build --release -p node-bench --bin types_bench >&2
export BENCH_BIN=$target/release BENCH_ARGS="$*"
VM_ENV="BENCH_BIN BENCH_ARGS" VM_MEM=${VM_MEM:-2048} exec tests/vm/run.sh --timeout "${BENCH_TIMEOUT:-7200}" bench/types/in-vm.sh
