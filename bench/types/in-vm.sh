#!/usr/bin/env bash
# Guest side of bench/types/run.sh: runs types_bench inside a network namespace of its own (it
# moves to a fresh one per case).
set -euo pipefail
ns=typesbench$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
# shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
ip netns exec "$ns" "$BENCH_BIN/types_bench" --svc-proxy "$BENCH_BIN/svc-proxy" --work "/tmp/$ns" ${BENCH_ARGS:-}
