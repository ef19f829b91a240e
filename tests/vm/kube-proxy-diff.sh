#!/usr/bin/env bash
# kube-proxy's IPVS mode and svc-proxy side by side (issue 10, items 1 and 2): for each state of
# the corpus (tests/vm/kube-proxy-diff/states/), both proxies program a fresh node namespace of
# their own from the same API server (the host's, through the guest's forward); what they
# programmed — IPVS services and real servers, the VIPs on the dummy device, the meaning of the
# ipset members — is normalized by kpdiff.py and compared. Every difference must be listed in
# tests/vm/kube-proxy-diff/intended.txt (intended, pending issue 12, or a known bug), and every
# listed one must be seen: a new difference fails, and so does a fixed one still listed.
#
# States with the same proxy flags (a "# kpdiff-flags:" header) share a round: the round's
# states are applied, the EndpointSlice controller catches up, then kube-proxy and svc-proxy
# start at once in two equal node namespaces (same addresses, each on an underlay of its own,
# same node name kpdiff-node), and stop once both report a sync of everything queued.
# KPDIFF_ISOLATE=1 gives every state a round of its own (slower; for pinning a difference down).
# KPDIFF_STATES="PATH..." runs only those state files. KPDIFF_VERBOSE=1 prints both proxies'
# normalized lines and logs; KPDIFF_KEEP=1 copies each round's dumps into $VM_JOB (run.sh with
# VM_KEEP=1 keeps that directory: where tests/vm/kube-proxy-diff/fixtures/ came from).
#
#   K8S_DIR=<up.sh dir> K8S_BIN=<bin dir> VM_APISERVER_PORT=<port> VM_ENV="K8S_DIR K8S_BIN" \
#     tests/vm/run.sh tests/vm/kube-proxy-diff.sh      # what tests/tests/kube_proxy_vm.rs does
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
# shellcheck source=tests/vm/cluster.sh
. "$here/cluster.sh"
require_root

for v in K8S_DIR K8S_BIN; do
	[ -n "${!v:-}" ] || { echo "FAIL setup: $v is not set (see the header of $0)"; exit 1; }
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
for f in "$bin/svc-proxy" "$bin/cni-bridge" "$K8S_BIN/kube-proxy" "$K8S_BIN/kubectl"; do
	[ -x "$f" ] || { echo "FAIL setup: $f is not built"; exit 1; }
done
diff_dir=$here/kube-proxy-diff
tool() { python3 "$diff_dir/kpdiff.py" "$@"; }

tag=kpd$$
work=$(mktemp -d "/tmp/$tag.XXXXXX")
node=kpdiff-node
kp_pid=
sp_pid=
stop_proxies() {
	local p
	for p in $kp_pid $sp_pid; do kill -TERM "$p" 2>/dev/null; done
	for p in $kp_pid $sp_pid; do wait "$p" 2>/dev/null; done
	kp_pid=
	sp_pid=
}
cleanup() {
	stop_proxies
	cluster_teardown
	rm -rf "$work"
}
trap cleanup EXIT
ck() { cluster_kubectl "$@"; }

# synced NETNS FAMILY...: the proxy's metrics say it has synced each FAMILY, no sync is older
# than the last change queued for its family, and nothing is pending (kube-proxy's and
# svc-proxy's kubeproxy_* metrics mean the same).
synced() {
	local ns=$1
	shift
	in_ns "$ns" curl -s --max-time 3 http://127.0.0.1:10249/metrics | awk -v need="$*" '
		function family() { match($0, /ip_family="[^"]+"/); return substr($0, RSTART + 11, RLENGTH - 12) }
		/^kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds\{/ { queued[family()] = $2 + 0 }
		/^kubeproxy_sync_proxy_rules_last_timestamp_seconds\{/ { synced[family()] = $2 + 0 }
		/^kubeproxy_sync_proxy_rules_(endpoint|service)_changes_pending / { if ($2 + 0 != 0) busy = 1 }
		END {
			n = split(need, f, " ")
			for (i = 1; i <= n; i++) if (!(f[i] in synced) || synced[f[i]] == 0) exit 1
			for (k in synced) if ((k in queued) && synced[k] < queued[k]) exit 1
			exit busy
		}'
}

# dump NETNS DIR: what kpdiff.py normalize reads.
dump() {
	mkdir -p "$2"
	in_ns "$1" ipvsadm -S -n >"$2/ipvs.save" &&
		in_ns "$1" ip -j addr show >"$2/addr.json" &&
		in_ns "$1" ipset save >"$2/ipset.save"
}

# The round's objects in the API, and the EndpointSlice controller caught up with its Pods.
api_settled() { ck get nodes,pods,services,endpointslices -A -o json >"$1/api.json" && tool settled "$1/api.json"; }

# No Service or EndpointSlice left in the namespaces listed in FILE.
round_gone() {
	local left
	left=$(ck get services,endpointslices -A --no-headers -o custom-columns=NS:.metadata.namespace) || return 1
	! grep -qxF -f "$1" <<<"$left"
}

proxy_alive() {
	kill -0 "$1" 2>/dev/null || { echo "$2 exited early; its log:" >&2; tail -n 30 "$3" >&2; return 1; }
}

section "cluster: node $node (one namespace per proxy, equal: 192.168.50.10, fd00:50::10), node kpdiff-other"
run cluster_init "$tag" "$work"
run cluster_underlay "${tag}a" 192.168.50 fd00:50
run cluster_underlay "${tag}b" 192.168.50 fd00:50
run cluster_node_object "$node" 192.168.50.10 fd00:50::10
run cluster_node_object kpdiff-other 192.168.50.20 fd00:50::20
run cluster_commit_nodes
echo "pod CIDRs: $node ${node_cidr[$node]} ${node_cidr6[$node]:-}, kpdiff-other ${node_cidr[kpdiff-other]}"

read -ra state_files <<<"${KPDIFF_STATES:-$(echo "$diff_dir"/states/*.yaml)}"
rounds_args=()
[ "${KPDIFF_ISOLATE:-}" = 1 ] && rounds_args+=(--isolate)
tool rounds "${rounds_args[@]}" "${state_files[@]}" >"$work/rounds" || { fail "setup: kpdiff.py rounds"; finish; }

common=(--kubeconfig "$K8S_DIR/kubeconfig-vm" --hostname-override "$node" --cluster-cidr 10.244.0.0/16,fd00:244::/56
	--healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249)
round=0
while IFS='|' read -r flags files; do
	round=$((round + 1))
	r=$work/round$round
	read -ra states <<<"$files"
	section "round $round (${flags:-default flags}): $(for s in "${states[@]}"; do basename "$s" .yaml; done | tr '\n' ' ')"
	run tool prepare "$r" "${states[@]}"
	while read -r ns; do cluster_api_namespaces+=("$ns"); done <"$r/namespaces.txt"
	run ck apply -f "$r/apply.yaml" >/dev/null
	if [ -s "$r/status.yaml" ]; then
		run ck apply --server-side --subresource=status --field-manager=nodenet-kubelet --force-conflicts -f "$r/status.yaml" >/dev/null
	fi
	while read -r ns pod; do run ck delete pod -n "$ns" "$pod" --wait=false >/dev/null; done <"$r/delete.txt"
	t0=$(now)
	run wait_every 120 1 api_settled "$r"
	echo "objects in the API, slices settled after $(since "$t0") s"

	run cluster_netns "kp$round" "${tag}a" 10
	run cluster_netns "sp$round" "${tag}b" 10
	kp_ns=$(cluster_ns "kp$round")
	sp_ns=$(cluster_ns "sp$round")
	t0=$(now)
	# shellcheck disable=SC2086 # the flags are words
	ip netns exec "$kp_ns" "$K8S_BIN/kube-proxy" --proxy-mode=ipvs "${common[@]}" --conntrack-max-per-core=0 \
		--v=2 $flags >"$r/kube-proxy.log" 2>&1 &
	kp_pid=$!
	# shellcheck disable=SC2086
	ip netns exec "$sp_ns" "$bin/svc-proxy" "${common[@]}" $flags >"$r/svc-proxy.log" 2>&1 &
	sp_pid=$!
	kp_synced() { proxy_alive "$kp_pid" kube-proxy "$r/kube-proxy.log" && synced "$kp_ns" IPv4 IPv6; }
	sp_synced() { proxy_alive "$sp_pid" svc-proxy "$r/svc-proxy.log" && synced "$sp_ns" IPv4; }
	run wait_every 300 1 sp_synced
	echo "svc-proxy synced after $(since "$t0") s"
	run wait_every 600 2 kp_synced
	echo "kube-proxy synced (IPv4 and IPv6) after $(since "$t0") s"
	run dump "$kp_ns" "$r/kube-proxy"
	run dump "$sp_ns" "$r/svc-proxy"
	stop_proxies
	[ "${KPDIFF_KEEP:-}" = 1 ] && cp -r "$r" "$VM_JOB/kpdiff-round$round"

	tool normalize --dummy kube-ipvs0 --api "$r/api.json" "$r/kube-proxy" >"$r/kube-proxy.lines" ||
		{ fail "setup: normalizing kube-proxy's state"; finish; }
	tool normalize --dummy svcproxy0 --api "$r/api.json" "$r/svc-proxy" >"$r/svc-proxy.lines" ||
		{ fail "setup: normalizing svc-proxy's state"; finish; }
	echo "normalized: kube-proxy $(wc -l <"$r/kube-proxy.lines") line(s), svc-proxy $(wc -l <"$r/svc-proxy.lines")"
	tool compare --api "$r/api.json" --intended "$diff_dir/intended.txt" --states "${states[@]}" \
		--kube-proxy "$r/kube-proxy.lines" --svc-proxy "$r/svc-proxy.lines" >"$r/compare" 2>&1
	rc=$?
	cat "$r/compare"
	checks_failed=$((checks_failed + $(grep -c '^FAIL' "$r/compare")))
	if [ "$rc" != 0 ]; then
		grep -q '^FAIL' "$r/compare" || fail "round $round: kpdiff.py compare failed (exit $rc)"
		echo "--- kube-proxy, normalized"
		cat "$r/kube-proxy.lines"
		echo "--- svc-proxy, normalized"
		cat "$r/svc-proxy.lines"
	fi
	if [ "${KPDIFF_VERBOSE:-}" = 1 ]; then
		for f in kube-proxy.lines svc-proxy.lines kube-proxy.log svc-proxy.log; do echo "--- $f"; cat "$r/$f"; done
	fi

	cluster_remove "kp$round"
	cluster_remove "sp$round"
	# Pods bound to a node without a kubelet would stay Terminating, and their namespace with them.
	run ck delete pods -A -l kpdiff.nodenet.test/state --force --grace-period=0 >/dev/null 2>&1
	# shellcheck disable=SC2046 # one namespace per line
	run ck delete namespace $(cat "$r/namespaces.txt") --wait=false >/dev/null
	run wait_every 120 1 round_gone "$r/namespaces.txt"
done <"$work/rounds"

finish
