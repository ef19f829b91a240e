#!/usr/bin/env bash
# The seed article's own commands (ip, ipvsadm, ipset, iptables, python http servers, curl), end to
# end, asserting each of its checks, including the two failures it shows before their fixes.
# Validates the kernel and the VM harness, independently of the project's binaries.
#
# Runs in a "node" network namespace of its own (the article's host), so it leaves the namespace
# it was started in untouched and can share one VM boot with other scenarios. Needs a kernel with
# IPVS and dummy: run it through tests/vm/run.sh on a machine whose kernel lacks them.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
require_root

tag=seed$$
node=$tag-node dustin=$tag-dustin leah=$tag-leah
work=$(mktemp -d /tmp/$tag.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	ip netns del "$dustin" 2>/dev/null
	ip netns del "$leah" 2>/dev/null
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT


section "node namespace $node with an uplink and a default route (a real node has one)"
run ip netns add "$node"
run N ip link set lo up
run N ip link add uplink0 type dummy
run N ip address add 192.168.200.2/24 dev uplink0
run N ip link set uplink0 up
run N ip route add default via 192.168.200.1

section "the article's environment: bridge, two pod namespaces, forwarding, masquerade"
run N sysctl -q --write net.ipv4.ip_forward=1
run N ip link add dev bridge_home type bridge
run N ip address add 10.0.0.1/24 dev bridge_home
for pod in dustin leah; do
	ns=$tag-$pod
	ip=$([ $pod = dustin ] && echo 10.0.0.11 || echo 10.0.0.21)
	run ip netns add "$ns"
	run in_ns "$ns" ip link set dev lo up
	run N ip link add dev veth_$pod type veth peer name veth_ns_$pod
	run N ip link set dev veth_$pod master bridge_home
	run N ip link set dev veth_$pod up
	run N ip link set dev veth_ns_$pod netns "$ns"
	run in_ns "$ns" ip link set dev veth_ns_$pod up
	run in_ns "$ns" ip address add $ip/24 dev veth_ns_$pod
done
run N ip link set bridge_home up
run in_ns "$dustin" ip route add default via 10.0.0.1
run in_ns "$leah" ip route add default via 10.0.0.1
run N iptables --table filter --append FORWARD --in-interface bridge_home --jump ACCEPT
run N iptables --table filter --append FORWARD --out-interface bridge_home --jump ACCEPT
run N iptables --table nat --append POSTROUTING --source 10.0.0.0/24 --jump MASQUERADE

pids+=("$(start_pod_server "$dustin" dustin "$work/dustin")")
pids+=("$(start_pod_server "$leah" leah "$work/leah")")
run wait_http "$node" http://10.0.0.11:8080/ dustin
run wait_http "$node" http://10.0.0.21:8080/ leah

section "pods reach each other"
expect "node -> dustin" dustin "$(http_get "$node" 10.0.0.11:8080)"
expect "node -> leah" leah "$(http_get "$node" 10.0.0.21:8080)"
expect "dustin -> leah" leah "$(http_get "$dustin" 10.0.0.21:8080)"
expect "leah -> dustin" dustin "$(http_get "$leah" 10.0.0.11:8080)"

section "IPVS virtual service 10.100.100.100:8080 rr, real server dustin (masquerading)"
run N ipvsadm --add-service --tcp-service 10.100.100.100:8080 --scheduler rr
run N ipvsadm --add-server --tcp-service 10.100.100.100:8080 --real-server 10.0.0.11:8080 --masquerading
expect "node -> VIP" dustin "$(http_get "$node" 10.100.100.100:8080)"
check_fails "leah -> VIP fails while the VIP is on no device (article)" http_get "$leah" 10.100.100.100:8080

section "dummy device holding the VIP, bridge-nf-call-iptables"
run N ip link add dev dustin-ipvs0 type dummy
run N ip addr add 10.100.100.100/32 dev dustin-ipvs0
run N sysctl -q --write net.bridge.bridge-nf-call-iptables=1
expect "leah -> VIP" dustin "$(http_get "$leah" 10.100.100.100:8080)"

section "hairpin"
run N ip link set dev veth_dustin type bridge_slave hairpin on
run N sysctl -q --write net.ipv4.vs.conntrack=0
check_fails "dustin -> VIP (itself) fails with hairpin but without vs.conntrack (article)" http_get "$dustin" 10.100.100.100:8080
run N sysctl -q --write net.ipv4.vs.conntrack=1
expect "dustin -> VIP (itself) with hairpin + vs.conntrack" dustin "$(http_get "$dustin" 10.100.100.100:8080)"

section "promiscuous bridge instead of hairpin"
run N ip link set bridge_home promisc on
run N ip link set dev veth_dustin type bridge_slave hairpin off
expect "dustin -> VIP (itself) with a promiscuous bridge" dustin "$(http_get "$dustin" 10.100.100.100:8080)"

section "masquerade: per-IP rule, then one ipset-driven rule"
run N iptables --table nat --delete POSTROUTING --source 10.0.0.0/24 --jump MASQUERADE
run N iptables --table nat --append POSTROUTING --source 10.0.0.11/32 --jump MASQUERADE
expect "dustin -> VIP with the per-IP rule" dustin "$(http_get "$dustin" 10.100.100.100:8080)"
run N iptables --table nat --delete POSTROUTING --source 10.0.0.11/32 --jump MASQUERADE
run N ipset create DUSTIN-LOOP-BACK hash:ip,port,ip
run N ipset add DUSTIN-LOOP-BACK 10.0.0.11,tcp:8080,10.0.0.11
run N iptables --table nat --append POSTROUTING --match set --match-set DUSTIN-LOOP-BACK dst,dst,src --jump MASQUERADE
expect "node -> VIP with the ipset rule" dustin "$(http_get "$node" 10.100.100.100:8080)"
expect "leah -> VIP with the ipset rule" dustin "$(http_get "$leah" 10.100.100.100:8080)"
expect "dustin -> VIP with the ipset rule" dustin "$(http_get "$dustin" 10.100.100.100:8080)"
expect "one POSTROUTING rule" 1 "$(N iptables -t nat -S POSTROUTING | grep -c '^-A')"

section "second real server leah, live"
run N ipvsadm --add-server --tcp-service 10.100.100.100:8080 --real-server 10.0.0.21:8080 --masquerading
run N ipset add DUSTIN-LOOP-BACK 10.0.0.21,tcp:8080,10.0.0.21
answers=()
for _ in 1 2 3 4 5 6; do answers+=("$(http_get "$node" 10.100.100.100:8080)"); done
echo "answers: ${answers[*]}"
# Round robin: consecutive requests alternate, whichever pod starts.
alternating=yes
for ((i = 1; i < ${#answers[@]}; i++)); do
	[ "${answers[i]}" != "${answers[i - 1]}" ] && [ -n "${answers[i]}" ] || alternating=no
done
expect "round robin alternates between dustin and leah" "yes dustin leah" \
	"$alternating $(printf '%s\n' "${answers[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//')"
expect "leah -> VIP (itself or dustin)" yes "$(a=$(http_get "$leah" 10.100.100.100:8080) && case $a in dustin | leah) echo yes ;; *) echo "$a" ;; esac)"

finish
