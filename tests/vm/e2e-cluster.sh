#!/usr/bin/env bash
# Every Service type on a two-node cluster (issue 12's VM tier): two node namespaces on one LAN,
# each with its node IP, cni-bridge pods on the pod CIDR node IPAM gave its Node, and its own
# svc-proxy (its node name, --pod-routes) watching the host's API server; a third Node object with
# no machine behind it; outside machines on the same LAN (a client, a stranger, "the internet").
# EndpointSlices come from the real controller (Pods bound to the nodes, status set by cluster.sh
# as a kubelet would). Each check is exact: who answers, the source address a pod sees, the curl
# exit code of a refusal.
#
#   K8S_DIR=<up.sh dir> K8S_BIN=<bin dir> VM_APISERVER_PORT=<port> VM_ENV="K8S_DIR K8S_BIN" \
#     tests/vm/run.sh tests/vm/e2e-cluster.sh        # what tests/tests/k8s_vm.rs does
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
[ -x "$bin/svc-proxy" ] || { echo "FAIL setup: $bin/svc-proxy is not built"; exit 1; }

tag=c$$
A=$tag-a B=$tag-b C=$tag-c
apps=$tag-apps
work=$(mktemp -d /tmp/$tag.XXXXXX)
lan=192.168.60
client_ip=$lan.50 stranger_ip=$lan.51 internet_ip=$lan.99
lb_ip=$lan.200 external_ip=$lan.201
declare -A proxy_pid=()
internet_pid=
udp_pid=
cleanup() {
	local p mine=()
	for p in "$udp_pid" "$internet_pid" "${proxy_pid[@]}"; do [ -z "$p" ] || mine+=("$p"); done
	((${#mine[@]} == 0)) || { kill "${mine[@]}" 2>/dev/null; wait "${mine[@]}" 2>/dev/null; }
	cluster_teardown
	rm -rf "$work"
}
trap cleanup EXIT
show_logs() {
	local n
	for n in "${!proxy_pid[@]}"; do
		echo "--- svc-proxy on $n (tail)"
		tail -n 25 "$work/proxy-$n.log"
	done
}
run() { "$@" || { fail "setup: '$*' failed"; show_logs; finish; }; }

ns_of() { cluster_ns "$1"; }
k() { cluster_kubectl "$@"; }

# curl_code NETNS URL: curl's exit code for one request (0 answered, 7 refused, 28 timed out).
curl_code() {
	in_ns "$(ns_of "$1")" curl -s -o /dev/null --connect-timeout 3 --max-time 5 "$2"
	echo $?
}
# get NETNS URL: one answer's body.
get() { in_ns "$(ns_of "$1")" curl -sS --fail --connect-timeout 5 --max-time 10 "$2" 2>&1; }
# spread NETNS HOST:PORT COUNT: the tally of COUNT answers.
spread() { requests "$(ns_of "$1")" "$3" "$2" | tally; }

section "the cluster: LAN $lan.0/24, nodes $A ($lan.11) and $B ($lan.12), Node $C ($lan.13, no machine)"
run cluster_init "$tag" "$work/cluster"
run cluster_underlay "${tag}lan" "$lan"
run cluster_node "$A" "${tag}lan" 11
run cluster_node "$B" "${tag}lan" 12
run cluster_node_object "$C" "$lan.13"
run cluster_client client "${tag}lan" 50
run cluster_client stranger "${tag}lan" 51
run cluster_client internet "${tag}lan" 99
run cluster_commit_nodes
echo "pod CIDRs: $A ${node_cidr[$A]}, $B ${node_cidr[$B]}, $C ${node_cidr[$C]}"
nsenter --net="/run/netns/$(ns_of internet)" python3 "$here/pod-server.py" internet 8080 >"$work/internet.log" 2>&1 &
internet_pid=$!

section "pods: a1 a2 l1 u1 on $A, b1 on $B"
run cluster_pod "$A" a1 "$apps" app=web
run cluster_pod "$A" a2 "$apps" app=web
run cluster_pod "$B" b1 "$apps" app=web
run cluster_pod "$A" l1 "$apps" app=only-a
run cluster_pod "$A" u1 "$apps" app=udp
run cluster_commit_pods
for p in a1 a2 b1 l1 u1; do echo "$p ${pod_ip[$p]} on ${pod_node[$p]}"; done

section "Services of every type"
run k apply -n "$apps" -f - <<EOF
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  loadBalancerSourceRanges: [$client_ip/32]
  selector: {app: only-a}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30082}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  externalIPs: [$external_ip]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: itp}
spec:
  internalTrafficPolicy: Local
  selector: {app: only-a}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  selector: {app: udp}
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 8080}]
EOF
# The load balancer's controller: the ingress IP in the status.
run k patch service lb -n "$apps" --subresource=status --type=merge \
	-p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$lb_ip\"}]}}}"
cip() { k get service "$1" -n "$apps" -o 'jsonpath={.spec.clusterIP}'; }
web_ip=$(cip web) itp_ip=$(cip itp) dns_ip=$(cip dns)
hc_port=$(k get service lb -n "$apps" -o 'jsonpath={.spec.healthCheckNodePort}')
echo "web $web_ip, itp $itp_ip, dns $dns_ip, lb $lb_ip (health check node port $hc_port), ext $external_ip"

section "svc-proxy on each node ($B also with strict ARP, IPVS timeouts and an excluded CIDR)"
declare -A extra=([$A]="" [$B]="--ipvs-strict-arp --ipvs-udp-timeout 20s --ipvs-tcpfin-timeout 30s --ipvs-exclude-cidrs $web_ip/32")
for n in "$A" "$B"; do
	# shellcheck disable=SC2086 # extra flags are a word list
	ip netns exec "$(ns_of "$n")" "$bin/svc-proxy" --kubeconfig "$K8S_DIR/kubeconfig-vm" --hostname-override "$n" \
		--cluster-cidr 10.244.0.0/16 --pod-routes --ipvs-sync-period 3s ${extra[$n]} >>"$work/proxy-$n.log" 2>&1 &
	proxy_pid[$n]=$!
done
# Converged: on both nodes the UDP Service's real server and the routes to the other Nodes.
dests() { in_ns "$(ns_of "$1")" ipvsadm -Ln "$2" "$3" 2>/dev/null | awk '$1 == "->" && $2 ~ /^[0-9]/ { print $2 }' | sort | tr '\n' ' '; }
# routes NODE: svc-proxy's routes there (protocol 201), one "DESTINATION via GATEWAY" per line.
routes() { in_ns "$(ns_of "$1")" ip -4 route show proto 201 | awk '{ print $1, $2, $3 }' | sort; }
converged() {
	local n
	for n in "$A" "$B"; do
		[ -n "$(dests "$n" -t "$web_ip:80")" ] && [ -n "$(dests "$n" -u "$dns_ip:53")" ] || return 1
		[ "$(routes "$n" | wc -l)" = 2 ] || return 1
	done
}
run wait_until 180 converged
for n in "$A" "$B"; do
	expect "$n: /healthz 200" 200 "$(in_ns "$(ns_of "$n")" curl -s --max-time 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/healthz)"
done

section "node settings: strict ARP and IPVS timeouts on $B only; an excluded CIDR's services are left alone"
sysctl_in() { in_ns "$(ns_of "$1")" cat "/proc/sys/net/ipv4/conf/all/$2"; }
expect "$A: arp_ignore left at 0" 0 "$(sysctl_in "$A" arp_ignore)"
expect "$B: arp_ignore 1 (--ipvs-strict-arp)" 1 "$(sysctl_in "$B" arp_ignore)"
expect "$B: arp_announce 2 (--ipvs-strict-arp)" 2 "$(sysctl_in "$B" arp_announce)"
timeouts() { in_ns "$(ns_of "$1")" ipvsadm -L --timeout | awk '{ print $(NF-2), $(NF-1), $NF }'; }
expect "$A: the kernel's IPVS timeouts" "900 120 300" "$(timeouts "$A")"
expect "$B: IPVS timeouts tcpfin 30 s, udp 20 s" "900 30 20" "$(timeouts "$B")"
for n in "$A" "$B"; do run in_ns "$(ns_of "$n")" ipvsadm -A -t "$web_ip:9999" -s rr; done
gone_9999() { ! in_ns "$(ns_of "$A")" ipvsadm -Ln -t "$web_ip:9999" >/dev/null 2>&1; }
check "$A: a hand-made virtual service on its VIP goes at the next resync" wait_until 30 gone_9999
sleep 7 # more than two of $B's resync periods
expect "$B: the same one on the excluded $web_ip/32 stays" 0 "$(in_ns "$(ns_of "$B")" ipvsadm -Ln -t "$web_ip:9999" >/dev/null 2>&1; echo $?)"
run in_ns "$(ns_of "$B")" ipvsadm -D -t "$web_ip:9999"

section "pod routes (host-gw): each node routes the other Nodes' pod CIDRs via their InternalIP"
expect "$A: routes to $B and $C" "$(printf '%s via %s\n%s via %s\n' "${node_cidr[$B]}" "$lan.12" "${node_cidr[$C]}" "$lan.13" | sort)" "$(routes "$A")"
expect "$B: routes to $A and $C" "$(printf '%s via %s\n%s via %s\n' "${node_cidr[$A]}" "$lan.11" "${node_cidr[$C]}" "$lan.13" | sort)" "$(routes "$B")"

section "pod to pod across nodes: no overlay, no NAT; pod to outside: SNAT"
expect "a1 -> b1 directly: b1 sees a1's own address" "b1 ${pod_ip[a1]}" "$(get a1 "http://${pod_ip[b1]}:8080/client")"
expect "b1 -> a2 directly: a2 sees b1's own address" "a2 ${pod_ip[b1]}" "$(get b1 "http://${pod_ip[a2]}:8080/client")"
expect "a1 -> the internet: seen as $A's address" "internet $lan.11" "$(get a1 "http://$internet_ip:8080/client")"
expect "b1 -> the internet: seen as $B's address" "internet $lan.12" "$(get b1 "http://$internet_ip:8080/client")"

section "ClusterIP from each node and from pods on each node, endpoints on both nodes"
for from in "$A" "$B" a1 b1; do
	expect "$from -> web: 12 requests round robin over a1 a2 b1" "a1=4 a2=4 b1=4" "$(spread "$from" "$web_ip:80" 12)"
done

section "a VIP's other ports are refused at once"
expect "$A -> web:81 refused (curl 7)" 7 "$(curl_code "$A" "http://$web_ip:81/")"
expect "a1 -> web:81 refused (curl 7)" 7 "$(curl_code a1 "http://$web_ip:81/")"

section "NodePort, externalTrafficPolicy Cluster: every endpoint from either node"
for n in "$A" "$B"; do
	expect "client -> $n:30080: a1 a2 b1" "a1=4 a2=4 b1=4" "$(spread client "${node_ip[$n]}:30080" 12)"
done

section "NodePort, externalTrafficPolicy Local: local endpoints only, the client's own address"
expect "client -> $A:30081: a1 a2 only" "a1=6 a2=6" "$(spread client "$lan.11:30081" 12)"
expect "client -> $B:30081: b1 only" "b1=12" "$(spread client "$lan.12:30081" 12)"
expect "b1 sees the client's address" "b1 $client_ip" "$(get client "http://$lan.12:30081/client")"
a_seen=$(get client "http://$lan.11:30081/client")
expect "a1/a2 see the client's address" "$client_ip" "${a_seen#* }"

section "LoadBalancer $lb_ip (Local, source range $client_ip/32), health check node port $hc_port"
health() { in_ns "$(ns_of client)" curl -s --max-time 5 -w ' %{http_code}' "http://$1:$hc_port/healthz"; }
a_health=$(health "$lan.11")
b_health=$(health "$lan.12")
echo "health check: $A: $a_health; $B: $b_health"
expect "$A (l1 local): 200" 200 "${a_health##* }"
expect "$A: localEndpoints 1" 1 "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1].rsplit(" ", 1)[0])["localEndpoints"])' "$a_health")"
expect "$B (none local): 503" 503 "${b_health##* }"
expect "$B: localEndpoints 0" 0 "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1].rsplit(" ", 1)[0])["localEndpoints"])' "$b_health")"
# The load balancer sends to the node its health check finds healthy.
for c in client stranger; do
	run in_ns "$(ns_of "$c")" ip route add "$lb_ip/32" via "$lan.11"
	run in_ns "$(ns_of "$c")" ip route add "$external_ip/32" via "$lan.12"
done
expect "client (in range) -> LB: l1, which sees the client's address" "l1 $client_ip" "$(get client "http://$lb_ip/client")"
expect "stranger (out of range) -> LB: dropped (curl 28)" 28 "$(curl_code stranger "http://$lb_ip/")"
expect "client -> LB:81 refused (curl 7)" 7 "$(curl_code client "http://$lb_ip:81/")"

section "external IP $external_ip (Cluster policy) via $B"
expect "client -> external IP: a1 a2 b1" "a1=4 a2=4 b1=4" "$(spread client "$external_ip:80" 12)"
expect "stranger -> external IP: served too (no source ranges)" "a1=1 a2=1 b1=1" "$(spread stranger "$external_ip:80" 3)"
expect "client -> external IP:81 refused (curl 7)" 7 "$(curl_code client "http://$external_ip:81/")"

section "internalTrafficPolicy Local"
expect "a1 ($A, l1 local) -> itp: l1 only" "l1=6" "$(spread a1 "$itp_ip:80" 6)"
expect "$A -> itp: l1 only" "l1=6" "$(spread "$A" "$itp_ip:80" 6)"
b_itp=$(curl_code b1 "http://$itp_ip/")
[ "$b_itp" != 0 ] && pass "b1 ($B, none local) -> itp: no answer (curl $b_itp)" || fail "b1 -> itp answered"
expect "$B: itp has no real server" "" "$(dests "$B" -t "$itp_ip:80")"

section "UDP: a steady flow to the ClusterIP moves to the replacement endpoint (no stale conntrack)"
in_ns "$(ns_of a2)" python3 "$here/udp-steady.py" "$dns_ip" 53 "$work/udp.stop" 0.2 >"$work/udp.out" 2>&1 &
udp_pid=$!
udp_answers() { grep -c "^$1\$" "$work/udp.out"; }
run wait_until 60 sh -c "[ \$(grep -c '^u1\$' '$work/udp.out') -ge 5 ]"
pass "the flow is answered by u1 ($(udp_answers u1) answers)"
run cluster_pod "$B" u2 "$apps" app=udp
run cluster_commit_pods
# u1 goes from the API, its server keeps answering: a stale entry would keep the flow on it.
run k delete pod u1 -n "$apps" --force --grace-period=0
only_u2() { [ "$(dests "$A" -u "$dns_ip:53")" = "${pod_ip[u2]}:8080 " ]; }
run wait_until 120 only_u2
mark=$(wc -l <"$work/udp.out")
check "after u1's removal the same flow is answered by u2" wait_until 30 sh -c "tail -n +$((mark + 1)) '$work/udp.out' | grep -q '^u2\$'"
sleep 2
last=$(tail -n 5 "$work/udp.out" | tr '\n' ' ')
expect "its last 5 answers all from u2" "u2 u2 u2 u2 u2 " "$last"
touch "$work/udp.stop"
wait "$udp_pid" 2>/dev/null
udp_pid=

section "pod routes follow the Nodes and heal"
run in_ns "$(ns_of "$A")" ip route del "${node_cidr[$B]}" via "$lan.12"
back() { routes "$A" | grep -qx "${node_cidr[$B]} via $lan.12"; }
check "a route to $B's pods deleted by hand on $A is back" wait_until 30 back
run k delete node "$C"
gone() { ! routes "$1" | grep -q "^${node_cidr[$C]} "; }
check "Node $C deleted: its route gone from $A" wait_until 60 gone "$A"
check "Node $C deleted: its route gone from $B" wait_until 60 gone "$B"
expect "$A still routes $B's pods" 1 "$(routes "$A" | grep -cx "${node_cidr[$B]} via $lan.12")"

section "svc-proxy stops; cleanup removes its own state, routes included"
for n in "$A" "$B"; do
	kill -TERM "${proxy_pid[$n]}"
	wait "${proxy_pid[$n]}"
	expect "$n: svc-proxy exits 0 on SIGTERM" 0 "$?"
	unset "proxy_pid[$n]"
	run ip netns exec "$(ns_of "$n")" "$bin/svc-proxy" cleanup
	expect "$n: no virtual service left" "" "$(in_ns "$(ns_of "$n")" ipvsadm -Ln | awk '$1 ~ /^(TCP|UDP|SCTP)$/')"
	expect "$n: no route of ours left" "" "$(routes "$n")"
	expect "$n: no SVCPROXY set left" "" "$(in_ns "$(ns_of "$n")" ipset list -n | grep '^SVCPROXY')"
	expect "$n: cni-bridge's pod routes and bridge still there" 1 "$(in_ns "$(ns_of "$n")" ip -o link show cni0 | wc -l)"
done

finish
