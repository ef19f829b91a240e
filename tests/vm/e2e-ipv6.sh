#!/usr/bin/env bash
# The scenario's Service over IPv6: two pods attached by cni-bridge on an IPv6 network, a Service
# with an IPv6 cluster IP selecting them, svc-proxy programming it. The node, the other pod and a
# pod itself (hairpin, through the IPv6 loop-back set and its ip6tables rule) reach the VIP, round
# robin; `svc-proxy cleanup` removes the IPv6 state too.
#
# Like e2e-scenario.sh: only cni-bridge and svc-proxy change kernel state, inside a "node" network
# namespace and pod namespaces this script creates. In the VM: tests/vm/run.sh tests/vm/e2e-ipv6.sh
# Binaries: $BIN_DIR/{cni-bridge,svc-proxy} (default ${CARGO_TARGET_DIR:-<repo>/target}/debug).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
require_root

bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
for f in "$bin/cni-bridge" "$bin/svc-proxy"; do
	[ -x "$f" ] || { echo "FAIL setup: $f is not built (cargo build -p cni-bridge -p svc-proxy, or set BIN_DIR)"; exit 1; }
done

vip=fd00:100::100
target="[$vip]:8080"
tag=v6e$$
node=$tag-node
work=$(mktemp -d /tmp/$tag.XXXXXX)
declare -A server_pid=()
proxy_pid=
cleanup() {
	local p
	for p in "${server_pid[@]}" $proxy_pid; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for p in alice bob; do ip netns del "$tag-$p" 2>/dev/null; done
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT


# cni VERB POD IP: cni-bridge as the runtime calls it, on an IPv6-only network.
cni() {
	N_exec env CNI_COMMAND="$1" CNI_CONTAINERID="$tag-$2" CNI_NETNS="/run/netns/$tag-$2" CNI_IFNAME=eth0 \
		CNI_PATH="$bin" CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2;IgnoreUnknown=1" \
		"$bin/cni-bridge" <<EOF
{"cniVersion":"1.0.0","name":"$tag","type":"cni-bridge","bridge":"bridge_v6",
 "isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"stateDir":"$work/state",
 "ipam":{"type":"cni-bridge-ipam","dataDir":"$work/ipam","ranges":[[{"subnet":"fd00:10::/64","gateway":"fd00:10::1"}]]},
 "args":{"cni":{"labels":[{"key":"component","value":"app"}],"ips":["$3"]}}}
EOF
}

# "ADDR:PORT WEIGHT" per real server of the VIP's virtual service.
real_servers() {
	N ipvsadm -Ln -t "$target" 2>/dev/null | awk '$1 == "->" && $2 ~ /^\[/ { print $2, $4 }' | sort
}
two_real_servers() { [ "$(real_servers)" = "$(printf '[fd00:10::11]:8080 1\n[fd00:10::21]:8080 1')" ]; }
answers_ok() { a=$(requests "$1" 1 "$target") && [ "$a" = alice ] || [ "$a" = bob ]; }

section "node namespace $node"
run ip netns add "$node"
run N ip link set lo up

section "two pods attached by cni-bridge on fd00:10::/64 (gateway fd00:10::1, label component=app)"
run start_pod alice ::
run start_pod bob ::
run cni ADD alice fd00:10::11 >"$work/alice.result"
run cni ADD bob fd00:10::21 >"$work/bob.result"
expect "alice's address from the ADD result" fd00:10::11 "$(result_ip "$work/alice.result")"
expect "bob's address from the ADD result" fd00:10::21 "$(result_ip "$work/bob.result")"

section "svc-proxy with a Service on the IPv6 cluster IP $vip"
mkdir -p "$work/services"
cat >"$work/services/app6.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: app6
spec:
  clusterIP: $vip
  ipFamilies: [IPv6]
  selector:
    component: app
  ports:
    - protocol: TCP
      port: 8080
      targetPort: 8080
EOF
sed 's/^/    /' "$work/services/app6.yaml"
ip netns exec "$node" "$bin/svc-proxy" --attachments "$work/state" --resync-period 2s "$work/services" >>"$work/svc-proxy.log" 2>&1 &
proxy_pid=$!
run wait_until 60 two_real_servers
N ipvsadm -Ln -t "$target"
check "VIP $vip/128 on svc-proxy's dummy device" sh -c "ip netns exec $node ip -o -6 addr show dev svcproxy0 | grep -q ' $vip/128 '"
loopback6() { N ipset list SVCPROXY-6-LOOP-BACK | grep -c 'fd00:10::[12]1,tcp:8080,fd00:10::[12]1'; }
expect "IPv6 loop-back set holds both endpoints" 2 "$(loopback6)"
rule_there() { N ip6tables -t nat -C SVCPROXY-POSTROUTING -m set --match-set SVCPROXY-6-LOOP-BACK dst,dst,src -j MASQUERADE; }
check "one ip6tables MASQUERADE rule matching the IPv6 set" wait_until 60 rule_there
check "ip6tables POSTROUTING jumps to it" wait_until 60 N ip6tables -t nat -C POSTROUTING -j SVCPROXY-POSTROUTING
expect "the IPv4 loop-back set stays empty" 0 "$(N ipset list SVCPROXY-LOOP-BACK | awk '/^Number of entries/ { print $4 }')"

section "curl [$vip]:8080 from the node, from the other pod, from a pod to itself"
# The bridge's gateway address finishes duplicate address detection in its own time.
check "node -> VIP answers" wait_until 60 answers_ok "$node"
check "bob -> VIP answers" wait_until 60 answers_ok "$tag-bob"
expect "alice -> VIP twice: once itself (hairpin), once bob" "alice=1 bob=1" "$(requests "$tag-alice" 2 "$target" | tally)"
answers=$(requests "$node" 10 "$target")
echo "10 requests from the node answered by: $(echo $answers)"
expect "10 requests split evenly (rr)" "alice=5 bob=5" "$(echo "$answers" | tally)"

section "svc-proxy cleanup removes the IPv6 state too"
kill -TERM "$proxy_pid"
wait "$proxy_pid"
proxy_pid=
run N_exec "$bin/svc-proxy" cleanup
expect "no virtual service" "" "$(N ipvsadm -Ln | grep -F "[$vip]")"
expect "no SVCPROXY set" "" "$(N ipset list -n | grep SVCPROXY)"
expect "no SVCPROXY rule or chain (ip6tables)" "" "$(N ip6tables-save -t nat | grep SVCPROXY)"
expect "cni-bridge's IPv6 masquerade set still there" yes "$(N ipset list -n | grep -q '^CNIB6-' && echo yes || echo no)"

show_proxy_log
finish
