#!/usr/bin/env bash
# Guest side of bench/proxy/run.sh: runs proxy_bench inside a network namespace of its own.
set -euo pipefail
ns=proxybench$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
# shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
ip netns exec "$ns" "$BENCH_BIN/proxy_bench" --svc-proxy "$BENCH_BIN/svc-proxy" --work "/tmp/$ns" ${BENCH_ARGS:-}
