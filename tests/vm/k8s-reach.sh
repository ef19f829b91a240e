#!/usr/bin/env bash
# The VM guest's way to the host's API server, checked from inside a node network namespace:
# kubectl with kubeconfig-vm lists this very API server's namespaces; many sequential connections
# and three long-lived watches beside concurrent lists all work through QEMU's guestfwd; and
# nothing else of the host (10.0.2.2 on any port, QEMU's DNS) or beyond is reachable.
#
#   K8S_DIR=<up.sh dir> K8S_BIN=<bin dir> K8S_MARKER=<namespace> \
#     VM_APISERVER_PORT=<its port> VM_ENV="K8S_DIR K8S_BIN K8S_MARKER" tests/vm/run.sh tests/vm/k8s-reach.sh
#
# K8S_MARKER names a namespace the host created beforehand (proof it is the host's API server);
# the script leaves a ConfigMap `reach` in it, which the caller can look for on the host.
# tests/tests/k8s_vm.rs runs it that way (ControlPlane::vm_command).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
require_root

for v in K8S_DIR K8S_BIN K8S_MARKER; do
	[ -n "${!v:-}" ] || { echo "FAIL setup: $v is not set (see the header of $0)"; exit 1; }
done
[ -f "$K8S_DIR/kubeconfig-vm" ] && [ -f "$K8S_DIR/env" ] || { echo "FAIL setup: $K8S_DIR holds no control plane"; exit 1; }
[ -x "$K8S_BIN/kubectl" ] || { echo "FAIL setup: no $K8S_BIN/kubectl"; exit 1; }
host_port=$(sed -n 's/^APISERVER_PORT=//p' "$K8S_DIR/env")
ns=$K8S_MARKER
api=https://$apiserver_vip:6443
pki=$K8S_DIR/pki

tag=reach$$
node=$tag-node
work=$(mktemp -d "/tmp/$tag.XXXXXX")
watch_pid=()
cleanup() {
	local p
	for p in "${watch_pid[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	ip route del default via 10.0.2.2 2>/dev/null
	apiserver_unroute "$node"
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

N_kubectl() { N "$K8S_BIN/kubectl" --kubeconfig "$K8S_DIR/kubeconfig-vm" --cache-dir "$work/kubectl-cache" "$@"; }
# N_curl ARGS: curl from the node namespace as the cluster admin, bounded.
N_curl() { N curl -sS --connect-timeout 5 --max-time 20 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"; }
# opens [NETNS] HOST PORT: a TCP connection to HOST:PORT is established (within 5 s).
opens() {
	local prefix=()
	(($# == 3)) && { prefix=(nsenter "--net=/run/netns/$1"); shift; }
	"${prefix[@]}" timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

section "node namespace with a route to the API server"
run ip netns add "$node"
run N ip link set lo up
run apiserver_route "$node"

section "kubectl in the node namespace, kubeconfig-vm"
started=$(now)
if out=$(N_kubectl get namespaces -o name 2>&1); then
	listed=$(echo "$out" | grep -cxE "namespace/(default|kube-system|$ns)")
	expect "kubectl lists the host API server's namespaces (default, kube-system, $ns)" 3 "$listed"
else
	fail "kubectl get namespaces from the node namespace: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
fi
echo "    kubectl get namespaces took $(since "$started") s"

section "sequential connections"
# One curl, ten transfers, each on a new connection (Connection: close); num_connects says so.
urls=()
for ((i = 0; i < 10; i++)); do urls+=("$api/version" -o /dev/null); done
answers=$(N_curl --http1.1 -H 'Connection: close' -w '%{num_connects}:%{http_code}\n' "${urls[@]}" 2>&1 | sort | uniq -c | awk '{ print $1 "x" $2 }')
expect "10 sequential new connections through the forward, all HTTP 200" "10x1:200" "$answers"

section "three long-lived watches beside concurrent lists"
for r in "api/v1/namespaces/$ns/configmaps" "api/v1/namespaces/$ns/services" "apis/discovery.k8s.io/v1/namespaces/$ns/endpointslices"; do
	name=${r##*/}
	# Not through a shell function: $! must be curl itself, so that kill reaches it.
	nsenter --net="/run/netns/$node" curl -sS -N --connect-timeout 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
		"$api/$r?watch=1" >"$work/watch-$name" 2>"$work/watch-$name.err" &
	watch_pid+=($!)
done
check "three watch connections established" wait_until 60 bash -c \
	"[ \"\$(nsenter --net=/run/netns/$node ss -Htn state established 'dst $apiserver_vip:6443' | wc -l)\" -ge 3 ]"
list_pids=()
for ((i = 0; i < 6; i++)); do
	N_curl -o /dev/null -w '%{http_code}\n' "$api/api/v1/namespaces?limit=1" >"$work/list-$i" 2>&1 &
	list_pids+=($!)
done
for p in "${list_pids[@]}"; do wait "$p"; done
expect "6 concurrent lists while the watches are open, all HTTP 200" "6" "$(cat "$work"/list-* | grep -cx 200)"
# A Service with a selector: the controller-manager on the host makes its EndpointSlice, which the
# third watch must see; the ConfigMap stays for the caller to find on the host.
check "kubectl apply from the node namespace" N_kubectl apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata: { name: reach, namespace: $ns }
data: { from: vm-guest }
---
apiVersion: v1
kind: Service
metadata: { name: reach, namespace: $ns }
spec:
  selector: { app: reach }
  ports: [{ port: 80 }]
EOF
check "configmaps watch sees the ConfigMap" wait_until 60 grep -q '"name":"reach"' "$work/watch-configmaps"
check "services watch sees the Service" wait_until 60 grep -q '"name":"reach"' "$work/watch-services"
check "endpointslices watch sees the controller's EndpointSlice" wait_until 60 grep -q '"kubernetes.io/service-name":"reach"' "$work/watch-endpointslices"
alive=0
for p in "${watch_pid[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
expect "the three watches are still open" 3 "$alive"

section "nothing else is reachable"
check "control: the node namespace opens $apiserver_vip:6443" opens "$node" "$apiserver_vip" 6443
check "control: the guest's root namespace opens $apiserver_vip:6443" opens "$apiserver_vip" 6443
check_fails "10.0.2.2:$host_port (the API server's real port on the host) is closed to the guest" opens 10.0.2.2 "$host_port"
for p in 22 80 443 6443; do
	check_fails "10.0.2.2:$p is closed to the guest" opens 10.0.2.2 "$p"
done
check_fails "QEMU's DNS 10.0.2.3:53 is closed to the guest" opens 10.0.2.3 53
check_fails "$apiserver_vip:80 (not the forwarded port) is closed" opens "$apiserver_vip" 80
# With a default route through the host's address, the world beyond is still closed (restrict=on).
run ip route add default via 10.0.2.2
check_fails "1.1.1.1:443 is closed even with a default route" opens 1.1.1.1 443
check_fails "8.8.8.8:53 is closed even with a default route" opens 8.8.8.8 53
run ip route del default via 10.0.2.2
# The node namespace, given a route to the host's address through the same masquerade: closed too.
run N ip route add 10.0.2.2/32 via "$(apiserver_gateway "$node")"
check_fails "10.0.2.2:$host_port is closed to the node namespace" opens "$node" 10.0.2.2 "$host_port"

finish
