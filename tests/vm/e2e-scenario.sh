#!/usr/bin/env bash
# The scenario of SCENARIO.md end to end with the project's binaries (issue 4, steps 1-7).
#
# Only cni-bridge (invoked as a runtime invokes it: CNI env vars, config on stdin) and svc-proxy
# (running on the scenario's Service manifest, verbatim) change kernel state. The script plays the
# runtime (creates pod namespaces, starts their HTTP servers) and otherwise uses ip, ipvsadm,
# ipset, iptables and curl to observe and to be the client. The exceptions are the perturbations
# the checks are about: an IPVS service created by hand before svc-proxy starts (cleanup must
# leave it), one deleted by hand (svc-proxy must restore it), and a broken manifest edit.
#
# Everything happens in a "node" network namespace this script creates (with a dummy uplink and a
# default route, as a real node has), and in pod namespaces; nothing outside them is touched, so it
# runs natively on a kernel with IPVS and dummy, or in the VM: tests/vm/run.sh tests/vm/e2e-scenario.sh
#
# Binaries: $BIN_DIR/{cni-bridge,svc-proxy} (default ${CARGO_TARGET_DIR:-<repo>/target}/debug).
# Manifest: $SERVICE_MANIFEST (default <repo>/conf/services/app-service.yaml).
# SCENARIO_VERBOSE=1 prints which pod answered each request (scripts/scenario.sh sets it).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
require_root

bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
manifest=${SERVICE_MANIFEST:-$repo/conf/services/app-service.yaml}
for f in "$bin/cni-bridge" "$bin/svc-proxy"; do
	[ -x "$f" ] || { echo "FAIL setup: $f is not built (cargo build -p cni-bridge -p svc-proxy, or set BIN_DIR)"; exit 1; }
done
[ -f "$manifest" ] || { echo "FAIL setup: no Service manifest at $manifest"; exit 1; }

vip=10.100.100.100
tag=e2e$$
node=$tag-node
work=$(mktemp -d /tmp/$tag.XXXXXX)
declare -A server_pid=()
proxy_pid=
client_pid=
watcher_pid=
cleanup() {
	local p
	for p in "${server_pid[@]}" $proxy_pid $client_pid $watcher_pid; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for p in dustin leah sam; do ip netns del "$tag-$p" 2>/dev/null; done
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT


# cni VERB POD [IP]: cni-bridge as the runtime calls it, from the node namespace.
cni() {
	local verb=$1 pod=$2 ips=
	[ -n "${3:-}" ] && ips=",\"ips\":[\"$3\"]"
	N_exec env CNI_COMMAND="$verb" CNI_CONTAINERID="$tag-$pod" CNI_NETNS="/run/netns/$tag-$pod" CNI_IFNAME=eth0 \
		CNI_PATH="$bin" CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod;IgnoreUnknown=1" \
		"$bin/cni-bridge" <<EOF
{"cniVersion":"1.0.0","name":"$tag","type":"cni-bridge","bridge":"bridge_home",
 "isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"stateDir":"$work/state",
 "ipam":{"type":"cni-bridge-ipam","dataDir":"$work/ipam","ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}]]},
 "args":{"cni":{"labels":[{"key":"component","value":"app"}]$ips}}}
EOF
}

# "ADDR:PORT WEIGHT" per real server of the VIP's virtual service; nothing when it does not exist.
real_servers() {
	N ipvsadm -Ln -t "$vip:8080" 2>/dev/null | awk '$1 == "->" && $2 ~ /^[0-9]/ { print $2, $4 }' | sort
}

# Only the real servers that get new connections (weight above 0; a removed TCP endpoint drains
# at weight 0 until its connections are gone).
active_servers() { real_servers | awk '$2 > 0'; }

section "node namespace $node: loopback, a dummy uplink and a default route (a real node's network)"
run ip netns add "$node"
run N ip link set lo up
run N ip link add uplink0 type dummy
run N ip address add 192.168.200.2/24 dev uplink0
run N ip link set uplink0 up
run N ip route add default via 192.168.200.1
# A foreign virtual service that svc-proxy must never touch (step 7).
run N ipvsadm -A -t 10.200.200.200:80 -s wlc

section "1. two pods attached by cni-bridge (10.0.0.0/24, gateway 10.0.0.1, label component=app)"
run start_pod dustin
run start_pod leah
run cni ADD dustin 10.0.0.11 >"$work/dustin.result"
run cni ADD leah 10.0.0.21 >"$work/leah.result"
expect "dustin's address from the ADD result" 10.0.0.11 "$(result_ip "$work/dustin.result")"
expect "leah's address from the ADD result" 10.0.0.21 "$(result_ip "$work/leah.result")"
expect "bridge_home holds the gateway 10.0.0.1/24" 10.0.0.1/24 "$(N ip -o -4 addr show dev bridge_home | awk '{ print $4 }')"
expect "dustin's default route via 10.0.0.1" "default via 10.0.0.1" "$(in_ns "$tag-dustin" ip route show default | awk '{ print $1, $2, $3 }')"
expect "node -> dustin directly" dustin "$(http_get "$node" 10.0.0.11:8080)"
expect "leah -> dustin directly" dustin "$(http_get "$tag-leah" 10.0.0.11:8080)"

section "2. svc-proxy running with the scenario's Service manifest, verbatim"
mkdir -p "$work/services"
cp "$manifest" "$work/services/app-service.yaml"
echo "manifest ($manifest):"
sed 's/^/    /' "$manifest"
start_proxy() {
	ip netns exec "$node" "$bin/svc-proxy" --attachments "$work/state" --resync-period 2s "$work/services" >>"$work/svc-proxy.log" 2>&1 &
	proxy_pid=$!
}
two_real_servers() { [ "$(real_servers)" = "$(printf '10.0.0.11:8080 1\n10.0.0.21:8080 1')" ]; }
start_proxy
t0=$(now)
run wait_until 60 two_real_servers
echo "virtual service with both real servers after $(since "$t0") s"
N ipvsadm -Ln -t "$vip:8080"
check "VIP $vip/32 on svc-proxy's dummy device" sh -c "ip netns exec $node ip -o addr show dev svcproxy0 | grep -q ' $vip/32 '"
check "loop-back set holds both endpoints" sh -c "ip netns exec $node ipset list SVCPROXY-LOOP-BACK | grep -q '10.0.0.11,tcp:8080,10.0.0.11' && ip netns exec $node ipset list SVCPROXY-LOOP-BACK | grep -q '10.0.0.21,tcp:8080,10.0.0.21'"
expect "no IPv6 loop-back set or ip6tables rule on an IPv4-only node" "" "$(N ipset list -n | grep SVCPROXY-6; N ip6tables-save -t nat 2>/dev/null | grep SVCPROXY)"

section "3. curl $vip:8080 from the node, from the other pod, from a pod to itself; 20 requests split"
expect "node -> VIP answers" yes "$(a=$(http_get "$node" "$vip:8080") && case $a in dustin | leah) echo yes ;; *) echo "$a" ;; esac)"
expect "leah -> VIP answers" yes "$(a=$(http_get "$tag-leah" "$vip:8080") && case $a in dustin | leah) echo yes ;; *) echo "$a" ;; esac)"
# Round robin: of two consecutive requests from dustin, one lands on dustin itself (hairpin).
hairpin=$(requests "$tag-dustin" 2 | tally)
expect "dustin -> VIP twice: once itself (hairpin), once leah" "dustin=1 leah=1" "$hairpin"
answers=$(requests "$node" 20)
echo "20 requests from the node answered by: $(echo $answers)"
expect "20 requests split evenly (rr)" "dustin=10 leah=10" "$(echo "$answers" | tally)"

section "4. a third pod added live; a pod deleted"
run start_pod sam
# Watchers started before the ADD, one process each for the whole wait (starting a process per
# poll costs seconds under emulation): the kernel's IPVS table, polled by bash builtins only,
# and a client asking the VIP until sam answers.
mkdir -p "$work/sam"
mkfifo "$work/sam/tick"
nsenter --net="/run/netns/$node" bash -c 'exec 9<>"$1/tick"
	for ((i = 0; i < 6000; i++)); do
		mapfile -t lines </proc/net/ip_vs
		n=0
		for l in "${lines[@]}"; do [[ $l == *"-> "[0-9A-F]* ]] && n=$((n + 1)); done
		((n >= 3)) && { echo "$EPOCHREALTIME" >"$1/programmed"; exit 0; }
		read -r -t 0.02 -u 9
	done
	exit 1' _ "$work/sam" &
watcher_pid=$!
nsenter --net="/run/netns/$node" python3 "$here/first-answer.py" "$vip" 8080 sam "$work/sam" &
client_pid=$!
run wait_until 120 test -f "$work/sam/ready"
t0=$(now)
run cni ADD sam >"$work/sam.result"
t_added=$EPOCHREALTIME
sam_ip=$(result_ip "$work/sam.result")
echo "sam attached as $sam_ip (ADD took $(since "$t0") s)"
wait "$watcher_pid"
watcher_status=$?
wait "$client_pid"
client_status=$?
client_pid= watcher_pid=
expect "sam's real server seen in the kernel's table" 0 "$watcher_status"
expect "sam answered a client through the VIP" 0 "$client_status"
programmed=$(awk -v a="$t_added" -v b="$(cat "$work/sam/programmed" 2>/dev/null)" 'BEGIN { printf "%.2f", b - a }')
answered=$(awk -v a="$t_added" -v b="$(cat "$work/sam/answered" 2>/dev/null)" 'BEGIN { printf "%.2f", b - a }')
echo "sam (counted from ADD's return; negative: before it returned): real server in the kernel after $programmed s, first answer through the VIP after $answered s"
expect "sam's real server" "$sam_ip:8080 1" "$(real_servers | grep "^$sam_ip:")"
expect "sam receives traffic within 2 s" yes "$([ -s "$work/sam/answered" ] && awk -v t="$answered" 'BEGIN { print (t <= 2 ? "yes" : "no, after " t " s") }' || echo "no answer")"
answers=$(requests "$node" 30)
echo "30 requests answered by: $(echo $answers)"
expect "30 requests over three pods" "dustin=10 leah=10 sam=10" "$(echo "$answers" | tally)"
before=$(real_servers | grep -v "^10.0.0.21:")
run cni DEL leah
kill "${server_pid[leah]}" && wait "${server_pid[leah]}" 2>/dev/null
unset 'server_pid[leah]'
ip netns del "$tag-leah"
leah_gone() { ! real_servers | grep -q "^10.0.0.21:8080 [1-9]"; }
t0=$(now)
check "leah's real server removed or drained to weight 0" wait_until 30 leah_gone
echo "leah out of rotation after $(since "$t0") s: $(real_servers | tr '\n' ';')"
expect "dustin's and sam's real servers unchanged" "$before" "$(real_servers | grep -v "^10.0.0.21:")"
answers=$(requests "$node" 20)
echo "20 requests answered by: $(echo $answers)"
expect "20 requests, all answered, none by leah" "dustin=10 sam=10" "$(echo "$answers" | tally)"

section "5. svc-proxy restarted while a long TCP connection through the VIP is open"
mkdir -p "$work/conn"
nsenter --net="/run/netns/$node" python3 "$here/long-conn.py" "$vip" 8080 "$work/conn" 2>"$work/conn/err" &
client_pid=$!
wait_until 60 test -f "$work/conn/answer.1"
first=$(cat "$work/conn/answer.1" 2>/dev/null)
echo "long connection: $first"
# An answer is "POD LOCAL-ADDRESS:PORT" (which pod, over which connection).
expect "the long connection answers through the VIP" yes "$(case $first in "dustin "* | "sam "*) echo yes ;; *) echo "no ('$first')" ;; esac)"
kill -TERM "$proxy_pid"
wait "$proxy_pid"
expect "svc-proxy exits 0 on SIGTERM" 0 "$?"
proxy_pid=
check "virtual service kept while svc-proxy is down" sh -c "ip netns exec $node ipvsadm -Ln -t $vip:8080"
touch "$work/conn/go.2"
wait_until 30 test -f "$work/conn/answer.2"
expect "same connection answers while svc-proxy is down" "$first" "$(cat "$work/conn/answer.2" 2>/dev/null)"
start_proxy
healthy() { [ "$(N curl -s --max-time 2 http://127.0.0.1:10249/healthz)" = ok ]; }
check "restarted svc-proxy is healthy" wait_until 60 healthy
touch "$work/conn/go.3"
wait_until 30 test -f "$work/conn/answer.3"
expect "same connection, same pod after the restart" "$first" "$(cat "$work/conn/answer.3" 2>/dev/null)"
touch "$work/conn/stop"
wait "$client_pid"
expect "long connection never broke" 0 "$?"
client_pid=
[ -s "$work/conn/err" ] && cat "$work/conn/err"
expect "active real servers after the restart" "$(printf '10.0.0.11:8080 1\n%s:8080 1' "$sam_ip")" "$(active_servers)"

section "6. drift repair and a broken manifest edit"
lines=$(wc -l <"$work/svc-proxy.log")
run N ipvsadm -D -t "$vip:8080"
t0=$(now)
service_back() { [ "$(active_servers | wc -l)" = 2 ]; }
# 30 resync periods: generous for emulation on a busy machine; a proxy that never resyncs shows.
check "virtual service deleted by hand comes back within 60 s" wait_until 60 service_back
echo "restored after $(since "$t0") s; svc-proxy's log meanwhile:"
tail -n +"$((lines + 1))" "$work/svc-proxy.log" | sed 's/^/    /'
expect "node -> VIP after the repair" yes "$(a=$(http_get "$node" "$vip:8080") && case $a in dustin | sam) echo yes ;; *) echo "$a" ;; esac)"
lines=$(wc -l <"$work/svc-proxy.log")
cp "$work/services/app-service.yaml" "$work/app-service.good"
# Replaced by rename, as a config management tool writes: the proxy never sees a half-written file.
sed 's/port: 8080/port: 70000/' "$work/app-service.good" >"$work/services/.app-service.yaml.new"
mv "$work/services/.app-service.yaml.new" "$work/services/app-service.yaml"
reported() { tail -n +"$((lines + 1))" "$work/svc-proxy.log" | grep -q "error: .*app-service.yaml"; }
check "broken edit reported in the log" wait_until 30 reported
tail -n +"$((lines + 1))" "$work/svc-proxy.log" | grep "error:" | head -n 3
errors=$(N curl -s --max-time 5 http://127.0.0.1:10249/metrics | awk '$1 == "svcproxy_errors_total{kind=\"manifest\"}" { print $2 }')
expect "broken edit counted in /metrics" yes "$(awk -v e="${errors:-0}" 'BEGIN { print (e >= 1 ? "yes" : "no (" e ")") }')"
sleep 3 # two resync periods: the broken file had every chance to be applied
expect "active real servers unchanged by the broken edit" "$(printf '10.0.0.11:8080 1\n%s:8080 1' "$sam_ip")" "$(active_servers)"
expect "the Service still answers" "dustin=1 sam=1" "$(requests "$node" 2 | tally)"
echo "svc-proxy's log since the broken edit (count, line):"
tail -n +"$((lines + 1))" "$work/svc-proxy.log" | sort | uniq -c | sed 's/^/    /'
cp "$work/app-service.good" "$work/services/.app-service.yaml.new"
mv "$work/services/.app-service.yaml.new" "$work/services/app-service.yaml"

section "7. svc-proxy cleanup"
kill -TERM "$proxy_pid"
wait "$proxy_pid"
proxy_pid=
run N_exec "$bin/svc-proxy" cleanup
expect "no virtual service on the VIP" "" "$(N ipvsadm -Ln | grep "$vip")"
expect "the hand-made virtual service is still there" "TCP 10.200.200.200:80 wlc" "$(N ipvsadm -Ln | grep 10.200.200.200 | xargs echo)"
expect "no dummy device svcproxy0" "" "$(N ip -o link show type dummy | grep svcproxy0)"
expect "VIP on no device" "" "$(N ip -o addr | grep "$vip")"
expect "no SVCPROXY set" "" "$(N ipset list -n | grep SVCPROXY)"
expect "no SVCPROXY rule or chain" "" "$(N iptables-save | grep SVCPROXY)"
expect "cni-bridge's own masquerade set still there" yes "$(N ipset list -n | grep -q '^CNIB-' && echo yes || echo no)"

show_proxy_log
finish
