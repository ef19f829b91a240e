#!/usr/bin/env bash
# Guest side of bench/kube-proxy/run.sh: one node (Node bench-node, 192.168.60.10) and, per
# proxy, a fresh node namespace with the route to the API server, a client namespace
# (10.244.1.2, a pod's address) and a server namespace (10.250.0.2:8080, the `conn` Service's
# endpoint) hung off it; kube_bench measure starts the proxy there and measures it.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$repo/tests/vm/lib.sh"
# shellcheck source=tests/vm/cluster.sh
. "$repo/tests/vm/cluster.sh"
require_root

work=$(mktemp -d /tmp/kube-bench.XXXXXX)
export BIN_DIR=$BENCH_BIN # cluster.sh's cni-bridge check
bench=$BENCH_BIN/kube_bench
node=bench-node
out=$VM_JOB/results.jsonl
server_pid=
cleanup() {
	[ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
	for ns in kbcli kbsrv; do ip netns del "$ns" 2>/dev/null; done
	cluster_teardown
	rm -rf "$work"
}
trap cleanup EXIT
die() { echo "bench: $*" >&2; exit 1; }

cluster_init kb "$work" || die "cluster_init"
cluster_underlay kbu 192.168.60 || die "underlay"
cluster_node_object "$node" 192.168.60.10
cluster_commit_nodes || die "the Node object"
echo "guest: $(nproc) vCPUs, $(awk '/MemTotal/ { printf "%d MiB", $2 / 1024 }' /proc/meminfo), kernel $(uname -r), $(nft --version)"

common=(--kubeconfig "$K8S_DIR/kubeconfig-vm" --hostname-override "$node" --cluster-cidr 10.244.0.0/16
	--healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249)
sp_log=(--log-level info)
[ "${BENCH_DEBUG:-}" = 1 ] && sp_log=(--log-level debug)
i=0
for p in ${BENCH_PROXIES//,/ }; do
	i=$((i + 1))
	case $p in
	svc-proxy-files)
		# What the API holds now (the other proxies' trials changed some slices).
		rm -rf "$work/manifests"
		"$bench" manifests --kubeconfig "$K8S_DIR/kubeconfig-vm" --out "$work/manifests" || die "manifests"
		;;
	esac
	case $p in
	svc-proxy) dataplane=ipvs cmd=("$BENCH_BIN/svc-proxy" "${common[@]}" "${sp_log[@]}") ;;
	svc-proxy-files)
		dataplane=ipvs
		cmd=("$BENCH_BIN/svc-proxy" --hostname-override "$node" --cluster-cidr 10.244.0.0/16
			--healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249
			--attachments /nonexistent "${sp_log[@]}" "$work/manifests")
		;;
	kube-proxy-ipvs) dataplane=ipvs cmd=("$K8S_BIN/kube-proxy" --proxy-mode=ipvs "${common[@]}" --conntrack-max-per-core=0 --v=1) ;;
	kube-proxy-nftables) dataplane=nftables cmd=("$K8S_BIN/kube-proxy" --proxy-mode=nftables "${common[@]}" --conntrack-max-per-core=0 --v=1) ;;
	*) die "unknown proxy $p" ;;
	esac
	echo "== [$(date -u +%T)] $p, $BENCH_N Services"
	cluster_netns "n$i" kbu 10 || die "node namespace"
	ns=$(cluster_ns "n$i")
	ip netns add kbcli && ip netns add kbsrv || die "client/server namespaces"
	{
		echo "link add cli0 type veth peer name eth0 netns kbcli"
		echo "link add srv0 type veth peer name eth0 netns kbsrv"
	} | ip -n "$ns" -batch - || die "veths"
	{
		echo "addr add 10.244.1.1/24 dev cli0"
		echo "link set cli0 up"
		echo "addr add 10.250.0.1/24 dev srv0"
		echo "link set srv0 up"
	} | ip -n "$ns" -batch - || die "node side"
	for side in "kbcli 10.244.1" "kbsrv 10.250.0"; do
		set -- $side
		printf '%s\n' "link set lo up" "link set eth0 up" "addr add $2.2/24 dev eth0" "route add default via $2.1" |
			ip -n "$1" -batch - || die "$1"
	done
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
	ip netns exec kbsrv "$bench" serve --listen 10.250.0.2:8080 &
	server_pid=$!
	sleep "$BENCH_SETTLE"
	conn=(--conn-client kbcli --conn-seconds "$BENCH_CONN_SECONDS")
	trials=$BENCH_TRIALS idle=$BENCH_IDLE
	# The file source is issue 9's "same set from files" column: first sync and memory.
	[ "$p" = svc-proxy-files ] && { conn=(); trials=0; idle=0; }
	ip netns exec "$ns" "$bench" measure --name "$p" --dataplane "$dataplane" \
		--kubeconfig "$K8S_DIR/kubeconfig-vm" --trials "$trials" --trial-base $((i * 1000)) \
		--idle "$idle" --timeout "${BENCH_CONVERGE_TIMEOUT:-1800}" --trial-timeout "${BENCH_TRIAL_TIMEOUT:-900}" --trials-within "${BENCH_TRIALS_WITHIN:-0}" "${conn[@]}" --self-bin "$bench" --log "$work/$p.log" --out "$out" -- "${cmd[@]}" ||
		{
			echo "bench: $p failed; its log ends:"
			grep -v 'FLAG:' "$work/$p.log" | tail -n 30
			echo "--- the kernel's log ends:"
			dmesg | tail -n 15
		}
	if [[ $p == svc-proxy* ]] && [ "${BENCH_DEBUG:-}" = 1 ]; then
		echo "--- $p: where the first sync went (its debug log)"
		grep -E "API: listed|listed [0-9]+|sync \(|applied:|changed Service|rules" "$work/$p.log" | head -n 20
	fi
	kill "$server_pid" 2>/dev/null
	wait "$server_pid" 2>/dev/null
	server_pid=
	ip netns del kbcli
	ip netns del kbsrv
	cluster_remove "n$i"
done
echo "--- records"
cat "$out"
"$bench" report "$out"
