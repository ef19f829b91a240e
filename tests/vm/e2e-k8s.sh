#!/usr/bin/env bash
# The scenario of SCENARIO.md fed by the real Kubernetes API (issue 9's VM tier): the seed
# Service is created through the API server on the host, two pods are Pods of that API bound to
# this node and attached by cni-bridge, their status is set as a kubelet would (Running, Ready,
# the address cni-bridge gave), the real EndpointSlice controller makes their slice, and svc-proxy
# in the node namespace watches it all through the guest's only way out (10.0.2.100:6443). Node,
# the other pod and hairpin reach the VIP, round robin; a pod's Ready=false takes it out of
# rotation.
#
#   K8S_DIR=<up.sh dir> K8S_BIN=<bin dir> VM_APISERVER_PORT=<port> VM_ENV="K8S_DIR K8S_BIN" \
#     tests/vm/run.sh tests/vm/e2e-k8s.sh        # what tests/tests/k8s_vm.rs does
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
require_root

for v in K8S_DIR K8S_BIN; do
	[ -n "${!v:-}" ] || { echo "FAIL setup: $v is not set (see the header of $0)"; exit 1; }
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
for f in "$bin/cni-bridge" "$bin/svc-proxy" "$K8S_BIN/kubectl"; do
	[ -x "$f" ] || { echo "FAIL setup: $f is not built"; exit 1; }
done

vip=10.100.100.100
tag=k8s$$
node=$tag-node
nodename=vm-node-$$
ns=scenario-$$
work=$(mktemp -d /tmp/$tag.XXXXXX)
declare -A server_pid=()
proxy_pid=
cleanup() {
	local p
	for p in "${server_pid[@]}" $proxy_pid; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	k delete namespace "$ns" --wait=false >/dev/null 2>&1
	k delete node "$nodename" --wait=false >/dev/null 2>&1
	for p in dustin leah; do ip netns del "$tag-$p" 2>/dev/null; done
	apiserver_unroute "$node"
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

# kubectl against the host's API server, from the node namespace (the way svc-proxy goes).
k() { N "$K8S_BIN/kubectl" --kubeconfig "$K8S_DIR/kubeconfig-vm" --cache-dir "$work/kubectl-cache" "$@"; }

cni() {
	local verb=$1 pod=$2
	N_exec env CNI_COMMAND="$verb" CNI_CONTAINERID="$tag-$pod" CNI_NETNS="/run/netns/$tag-$pod" CNI_IFNAME=eth0 \
		CNI_PATH="$bin" CNI_ARGS="K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$pod;IgnoreUnknown=1" \
		"$bin/cni-bridge" <<EOF
{"cniVersion":"1.0.0","name":"$tag","type":"cni-bridge","bridge":"bridge_home",
 "isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"stateDir":"$work/state",
 "ipam":{"type":"cni-bridge-ipam","dataDir":"$work/ipam","ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}]]}}
EOF
}

# The kubelet's part: Running, Ready (or not), with the address cni-bridge gave.
pod_status() {
	local pod=$1 ready=$2 ip=$3
	k patch pod "$pod" -n "$ns" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$ip\",\"podIPs\":[{\"ip\":\"$ip\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"$ready\"},{\"type\":\"ContainersReady\",\"status\":\"$ready\"}]}}"
}

real_servers() {
	N ipvsadm -Ln -t "$vip:8080" 2>/dev/null | awk '$1 == "->" && $2 ~ /^[0-9]/ { print $2, $4 }' | sort
}
active_servers() { real_servers | awk '$2 > 0'; }

section "node namespace $node: a dummy uplink, a default route, and the way to the API server"
run ip netns add "$node"
run N ip link set lo up
run N ip link add uplink0 type dummy
run N ip address add 192.168.200.2/24 dev uplink0
run N ip link set uplink0 up
run N ip route add default via 192.168.200.1
run apiserver_route "$node"
check "the API server answers from the node" k get --raw /readyz

section "1. the seed Service through the API; Pods bound to this node"
run k apply -f - <<EOF
apiVersion: v1
kind: Node
metadata: {name: $nodename}
---
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
EOF
# The scenario's manifest, verbatim, in this test's namespace.
run k apply -n "$ns" -f "$repo/conf/services/app-service.yaml"
expect "the API kept the scenario's VIP" "$vip" "$(k get service app-service -n "$ns" -o 'jsonpath={.spec.clusterIP}')"
for p in dustin leah; do
	run k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $p, namespace: $ns, labels: {component: app}}
spec:
  nodeName: $nodename
  containers: [{name: server, image: registry.invalid/pod-server:1, ports: [{containerPort: 8080}]}]
EOF
done

section "2. the runtime's part: pod namespaces and servers, cni-bridge ADD, Pod status as a kubelet sets it"
run start_pod dustin
run start_pod leah
run cni ADD dustin >"$work/dustin.result"
run cni ADD leah >"$work/leah.result"
dustin_ip=$(result_ip "$work/dustin.result")
leah_ip=$(result_ip "$work/leah.result")
echo "dustin $dustin_ip, leah $leah_ip"
run pod_status dustin True "$dustin_ip"
run pod_status leah True "$leah_ip"

section "3. svc-proxy on the node, fed by the API"
ip netns exec "$node" "$bin/svc-proxy" --kubeconfig "$K8S_DIR/kubeconfig-vm" --hostname-override "$nodename" \
	--ipvs-sync-period 2s >>"$work/svc-proxy.log" 2>&1 &
proxy_pid=$!
both() { [ "$(active_servers)" = "$(printf '%s:8080 1\n%s:8080 1' "$dustin_ip" "$leah_ip" | sort)" ]; }
t0=$(now)
run wait_until 120 both
echo "both real servers from the controller's EndpointSlice after $(since "$t0") s"
N ipvsadm -Ln -t "$vip:8080"
k get endpointslices -n "$ns" -o wide
check "VIP $vip/32 on svc-proxy's dummy device" sh -c "ip netns exec $node ip -o addr show dev svcproxy0 | grep -q ' $vip/32 '"
healthz() { N curl -s --max-time 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/healthz; }
expect "/healthz: 200 (synced, its Node known)" 200 "$(healthz)"
expect "/livez: 200" 200 "$(N curl -s --max-time 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/livez)"

section "4. node, other pod and hairpin reach the VIP; round robin"
expect "node -> VIP answers" yes "$(a=$(http_get "$node" "$vip:8080") && case $a in dustin | leah) echo yes ;; *) echo "$a" ;; esac)"
expect "leah -> VIP answers" yes "$(a=$(http_get "$tag-leah" "$vip:8080") && case $a in dustin | leah) echo yes ;; *) echo "$a" ;; esac)"
expect "dustin -> VIP twice: once itself (hairpin), once leah" "dustin=1 leah=1" "$(requests "$tag-dustin" 2 | tally)"
answers=$(requests "$node" 20)
echo "20 requests from the node answered by: $(echo $answers)"
expect "20 requests split evenly (rr)" "dustin=10 leah=10" "$(echo "$answers" | tally)"

section "5. leah's Ready=false takes her out of rotation"
run pod_status leah False "$leah_ip"
only_dustin() { [ "$(active_servers)" = "$dustin_ip:8080 1" ]; }
t0=$(now)
check "leah out of rotation" wait_until 60 only_dustin
echo "after $(since "$t0") s: $(real_servers | tr '\n' ';')"
answers=$(requests "$node" 10)
expect "10 requests, all answered by dustin" "dustin=10" "$(echo "$answers" | tally)"
run pod_status leah True "$leah_ip"
check "leah back in rotation when Ready again" wait_until 60 both

section "6. svc-proxy stops; cleanup removes only its own state"
kill -TERM "$proxy_pid"
wait "$proxy_pid"
expect "svc-proxy exits 0 on SIGTERM" 0 "$?"
proxy_pid=
run N_exec "$bin/svc-proxy" cleanup
expect "no virtual service on the VIP" "" "$(N ipvsadm -Ln | grep "$vip")"
expect "no dummy device svcproxy0" "" "$(N ip -o link show type dummy | grep svcproxy0)"

show_proxy_log
finish
