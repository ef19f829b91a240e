#!/usr/bin/env bash
# svc-proxy beside kube-proxy (--proxy-mode=ipvs and --proxy-mode=nftables, the same release as
# the API server) on one real control plane (issue 10; issue 9's API-vs-files column). For each
# size N: N Services × 5 endpoints into the API server on this machine (127.0.0.1), then one VM
# (Debian's kernel, IPVS) in which every proxy in turn programs a fresh node namespace from that
# API server, measured by src/bin/kube_bench.rs; prints the tables and the last line
# `svc-proxy/kube-proxy: first-sync R1, one-change R2, idle-cpu R3, rss R4`.
#
#   bench/kube-proxy/run.sh [--sizes 1000,10000] [--proxies LIST] [--trials 20] [--idle 120]
#                           [--settle 20] [--conn-seconds 10] [--trial-timeout 900]
#                           [--trials-within 0]
#
# LIST: any of svc-proxy, svc-proxy-files, kube-proxy-ipvs, kube-proxy-nftables (default: all).
# BENCH_DEBUG=1 runs svc-proxy at --log-level debug and prints its sync timings (where the first
# sync's time goes). VM_MEM (default 4096), BENCH_TIMEOUT (VM seconds per size, default 7200).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "bench/kube-proxy: run as root (QEMU's 9p export, network namespaces)" >&2; exit 1; }

sizes=1000,10000
proxies=svc-proxy,svc-proxy-files,kube-proxy-ipvs,kube-proxy-nftables
trials=20 idle=120 settle=20 conn_seconds=10 trial_timeout=900 trials_within=0
while (($#)); do
	case $1 in
	--sizes) sizes=$2; shift 2 ;;
	--proxies) proxies=$2; shift 2 ;;
	--trials) trials=$2; shift 2 ;;
	--idle) idle=$2; shift 2 ;;
	--settle) settle=$2; shift 2 ;;
	--conn-seconds) conn_seconds=$2; shift 2 ;;
	--trial-timeout) trial_timeout=$2; shift 2 ;;
	--trials-within) trials_within=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench/kube-proxy: unknown argument $1" >&2; exit 2 ;;
	esac
done

target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release -p svc-proxy -p cni-bridge >&2
cargo build --release -p node-bench --bin kube_bench >&2
K8S_BIN=$(tests/k8s/build.sh)
export K8S_BIN
k8s=$(mktemp -d /tmp/kube-bench.XXXXXX)
trap 'tests/k8s/down.sh "$k8s" >&2 || true; rm -rf "$k8s"' EXIT
tests/k8s/up.sh --owner $$ "$k8s" >&2
# shellcheck source=/dev/null
. "$k8s/env"

export K8S_DIR=$k8s BENCH_BIN=$target/release BENCH_PROXIES=$proxies BENCH_TRIALS=$trials \
	BENCH_IDLE=$idle BENCH_SETTLE=$settle BENCH_CONN_SECONDS=$conn_seconds BENCH_TRIAL_TIMEOUT=$trial_timeout BENCH_TRIALS_WITHIN=$trials_within BENCH_DEBUG=${BENCH_DEBUG:-} BENCH_CONVERGE_TIMEOUT=${BENCH_CONVERGE_TIMEOUT:-1800}
echo "bench/kube-proxy: $(date -u +'%F %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), Kubernetes $("$K8S_BIN/kube-proxy" --version 2>/dev/null | awk '{print $2}')"
echo "proxies: $proxies; trials $trials; idle window $idle s; settle $settle s"
for n in ${sizes//,/ }; do
	"$BENCH_BIN/kube_bench" populate --kubeconfig "$k8s/kubeconfig" --services "$n"
	BENCH_N=$n VM_APISERVER_PORT=$APISERVER_PORT VM_MEM=${VM_MEM:-4096} \
		VM_ENV="K8S_DIR K8S_BIN BENCH_BIN BENCH_PROXIES BENCH_TRIALS BENCH_IDLE BENCH_SETTLE BENCH_CONN_SECONDS BENCH_TRIAL_TIMEOUT BENCH_TRIALS_WITHIN BENCH_DEBUG BENCH_N BENCH_CONVERGE_TIMEOUT" \
		tests/vm/run.sh --timeout "${BENCH_TIMEOUT:-7200}" bench/kube-proxy/in-vm.sh
done
