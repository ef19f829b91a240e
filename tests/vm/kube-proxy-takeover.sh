#!/usr/bin/env bash
# Live migration from kube-proxy's IPVS mode (issue 10, item 4): a node that kube-proxy
# (--proxy-mode=ipvs) has programmed — kube-ipvs0, its KUBE-* chains and sets, a long-lived TCP
# connection from a pod through a VIP — is switched over the way docs/SVC-PROXY.md ("Migrating
# from kube-proxy") tells an operator to: stop kube-proxy, start svc-proxy with
# --dummy kube-ipvs0, then `svc-proxy remove-kube-proxy-leftovers`. Checked: the virtual
# services are adopted (same table, no add/delete in svc-proxy's log, connection counters keep
# counting), the open connection keeps working at every step, the leftovers command refuses
# while kube-proxy runs, removes exactly kube-proxy's chains, jumps and sets (kubelet's canary
# chains, an operator's rule and set stay), and can run twice.
#
#   K8S_DIR=<up.sh dir> K8S_BIN=<bin dir> VM_APISERVER_PORT=<port> VM_ENV="K8S_DIR K8S_BIN" \
#     tests/vm/run.sh tests/vm/kube-proxy-takeover.sh   # what tests/tests/kube_proxy_vm.rs does
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

tag=kpt$$
work=$(mktemp -d "/tmp/$tag.XXXXXX")
nodename=takeover-node
ns=takeover
vip=10.96.50.10
sticky=10.96.50.20
ext=192.0.2.50
kp_pid=
sp_pid=
conn_pid=
cleanup() {
	local p
	[ -d "$work/conn" ] && touch "$work/conn/stop"
	for p in $conn_pid $kp_pid $sp_pid; do kill "$p" 2>/dev/null; done
	for p in $conn_pid $kp_pid $sp_pid; do wait "$p" 2>/dev/null; done
	cluster_teardown
	rm -rf "$work"
}
trap cleanup EXIT
ck() { cluster_kubectl "$@"; }
show_logs() {
	local f
	for f in kube-proxy.log svc-proxy.log; do
		[ -f "$work/$f" ] && { echo "--- $f (tail)"; tail -n 25 "$work/$f"; }
	done
}
run() { "$@" || { fail "setup: '$*' failed"; show_logs; finish; }; }

section "a node, two web pods and a client pod (cni-bridge), an outside machine, Services through the API"
run cluster_init "$tag" "$work"
run cluster_underlay "${tag}u" 192.168.60
run cluster_node "$nodename" "${tag}u" 11
run cluster_client outside "${tag}u" 50
run cluster_commit_nodes
node=$(cluster_ns "$nodename")
N() { in_ns "$node" "$@"; }
run cluster_pod "$nodename" web-a "$ns" app=web
run cluster_pod "$nodename" web-b "$ns" app=web
run cluster_pod "$nodename" client "$ns" app=client
run cluster_commit_pods
echo "web-a ${pod_ip[web-a]}, web-b ${pod_ip[web-b]}, client ${pod_ip[client]} (pod CIDR ${node_cidr[$nodename]})"
run ck apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: $vip
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-sticky}
spec:
  clusterIP: $sticky
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  ports: [{name: http, port: 81, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-ext}
spec:
  clusterIP: 10.96.50.30
  externalIPs: [$ext]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  clusterIP: 10.96.50.40
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30450}]
EOF
node_address=${node_ip[$nodename]}

# What others put in the node's netfilter state, which the leftovers command must not touch:
# kubelet's canary chains, an operator's rule and an ipset whose name merely starts with KUBE-.
for t in mangle nat filter; do run N iptables -t "$t" -N KUBE-KUBELET-CANARY; done
run N ip6tables -t nat -N KUBE-KUBELET-CANARY
run N iptables -t filter -A INPUT -p tcp --dport 22 -m comment --comment "operator: ssh" -j ACCEPT
run N ipset create KUBE-OPERATOR-ALLOW hash:ip
run N ipset add KUBE-OPERATOR-ALLOW 192.168.60.99

# synced FAMILY...: the proxy's metrics say it has synced each FAMILY, no sync is older than the
# last change queued for its family, and nothing is pending.
synced() {
	N curl -s --max-time 3 http://127.0.0.1:10249/metrics | awk -v need="$*" '
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
# The IPVS table without its counters (-S: services, flags, real servers, weights).
table() { N ipvsadm -S -n | sort; }
both_endpoints() {
	[ "$(N ipvsadm -S -n | grep -c -e "-a -t $vip:80 -r ${pod_ip[web-a]}:8080 -m -w 1" -e "-a -t $vip:80 -r ${pod_ip[web-b]}:8080 -m -w 1")" = 2 ]
}
# connections VIP:PORT: IPVS's count of connections the virtual service has scheduled (--stats).
# The kernel folds its per-CPU counters into this figure in the rate estimator, every 2 s, so a
# count read right after traffic may not include it yet: see counts_at_least.
connections() { N ipvsadm -Ln --stats -t "$1" | awk '$1 == "TCP" { print $3 }'; }
# counts_at_least VIP:PORT N: the scheduled-connection count has reached N.
counts_at_least() { [ "$(connections "$1")" -ge "$2" ]; }
# full_syncs N: svc-proxy has done at least N full syncs (the first one and resyncs).
full_syncs() {
	N curl -s --max-time 3 http://127.0.0.1:10249/metrics |
		awk -v n="$1" '/^kubeproxy_sync_full_proxy_rules_duration_seconds_count\{ip_family="IPv4"\}/ { c = $2 + 0 } END { exit !(c >= n) }'
}
netfilter() { { N iptables-save; N ip6tables-save; } | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'; }
kube_proxy_chains='KUBE-(SERVICES|POSTROUTING|NODE-PORT|LOAD-BALANCER|MARK-MASQ|FORWARD|PROXY-FIREWALL|SOURCE-RANGES-FIREWALL|IPVS-FILTER|IPVS-OUT-FILTER)'

section "1. kube-proxy --proxy-mode=ipvs programs the node"
ip netns exec "$node" "$K8S_BIN/kube-proxy" --proxy-mode=ipvs --kubeconfig "$K8S_DIR/kubeconfig-vm" \
	--hostname-override "$nodename" --cluster-cidr 10.244.0.0/16 --conntrack-max-per-core=0 --v=2 \
	>"$work/kube-proxy.log" 2>&1 &
kp_pid=$!
t0=$(now)
# Both halves: kube-proxy runs dual-stack (ip6tables works here), its IPv6 half writes the
# ip6tables chains and KUBE-6-* sets.
run wait_every 600 2 synced IPv4 IPv6
run wait_until 60 both_endpoints
echo "kube-proxy synced (IPv4 and IPv6) after $(since "$t0") s"
check "kube-proxy's ip6tables chains are in place" sh -c "ip netns exec $node ip6tables-save -t nat | grep -q '^:KUBE-SERVICES'"
N ipvsadm -Ln
vips() { N ip -o -4 addr show dev kube-ipvs0 | awk '{ print $4 }' | grep -x -e "$vip/32" -e "$sticky/32" -e "$ext/32" -e '10.96.50.[34]0/32' | sort | tr '\n' ' '; }
expect "kube-ipvs0 holds the VIPs" "10.96.50.10/32 10.96.50.20/32 10.96.50.30/32 10.96.50.40/32 192.0.2.50/32 " "$(vips)"
check "kube-proxy's node port on the node's address" N ipvsadm -Ln -t "$node_address:30450"
check "kube-proxy's chains are in place" sh -c "ip netns exec $node iptables-save -t nat | grep -q '^:KUBE-SERVICES'"
check "kube-proxy's sets are in place" sh -c "ip netns exec $node ipset list -n | grep -qx KUBE-LOOP-BACK"
answers=$(requests "$(cluster_ns client)" 10 "$vip:80")
expect "10 requests from the client pod through kube-proxy's VIP, round robin" "web-a=5 web-b=5" "$(echo "$answers" | tally)"
expect "4 requests from outside to the node port, round robin" "web-a=2 web-b=2" "$(requests "$(cluster_ns outside)" 4 "$node_address:30450" | tally)"

mkdir -p "$work/conn"
in_ns "$(cluster_ns client)" python3 "$here/long-conn.py" "$vip" 80 "$work/conn" 2>"$work/conn/err" &
conn_pid=$!
run wait_until 60 test -f "$work/conn/answer.1"
first=$(cat "$work/conn/answer.1")
echo "long-lived connection: answered by ${first% *} on ${first#* }"
before=$(table)
conns_before=$(connections "$vip:80")
echo "IPVS connections scheduled by $vip:80 so far: $conns_before"

section "2. remove-kube-proxy-leftovers refuses while kube-proxy runs"
out=$(ip netns exec "$node" "$bin/svc-proxy" remove-kube-proxy-leftovers 2>&1)
rc=$?
expect "it exits 1" 1 "$rc"
expect "it names kube-proxy's pid" yes "$(grep -q "kube-proxy is still running in this network namespace (pid $kp_pid)" <<<"$out" && echo yes || echo "$out")"
out=$(ip netns exec "$node" "$bin/svc-proxy" remove-kube-proxy-leftovers --dry-run 2>&1)
expect "a dry run refuses too" 1 "$?"
check "kube-proxy's chains are untouched" sh -c "ip netns exec $node iptables-save -t nat | grep -q '^:KUBE-SERVICES'"

section "3. kube-proxy stops; svc-proxy --dummy kube-ipvs0 adopts its virtual services"
kill -TERM "$kp_pid"
wait "$kp_pid"
kp_pid=
expect "the IPVS table is as kube-proxy left it" "$before" "$(table)"
ip netns exec "$node" "$bin/svc-proxy" --dummy kube-ipvs0 --kubeconfig "$K8S_DIR/kubeconfig-vm" \
	--hostname-override "$nodename" --cluster-cidr 10.244.0.0/16 --ipvs-sync-period 3s \
	>"$work/svc-proxy.log" 2>&1 &
sp_pid=$!
t0=$(now)
run wait_every 120 1 synced IPv4
echo "svc-proxy synced after $(since "$t0") s"
# Two full resyncs (3 s period) after the first sync: a resync must not recreate anything either.
run wait_every 60 1 full_syncs 3
expect "the IPVS table is unchanged (services, flags, real servers, weights)" "$before" "$(table)"
churn=$(grep -E ': (add|update|delete) service |(add|set|delete) real server |(add|delete) address |applied .*(add_service|del_service|add_dest|del_dest)' "$work/svc-proxy.log")
expect "svc-proxy's log: no virtual service, real server or VIP added, changed or deleted" "" "$churn"
conns_after=$(connections "$vip:80")
expect "the connection counter kept counting (not reset by a re-created service)" yes \
	"$([ "$conns_after" -ge "$conns_before" ] && echo yes || echo "$conns_before -> $conns_after")"
touch "$work/conn/go.2"
run wait_until 30 test -f "$work/conn/answer.2"
expect "the long-lived connection answers across the switch, same pod, same connection" "$first" "$(cat "$work/conn/answer.2")"
answers=$(requests "$(cluster_ns client)" 10 "$vip:80")
expect "10 new requests through the VIP, round robin" "web-a=5 web-b=5" "$(echo "$answers" | tally)"
expect "4 requests from outside to the node port (kube-proxy's masquerade rules still in place)" "web-a=2 web-b=2" \
	"$(requests "$(cluster_ns outside)" 4 "$node_address:30450" | tally)"
expect "the connection counter counts them" yes \
	"$(wait_every 10 1 counts_at_least "$vip:80" $((conns_after + 10)) && echo yes || echo "$conns_after -> $(connections "$vip:80")")"
expect "web-a through the VIP, four times: itself twice (hairpin), web-b twice" "web-a=2 web-b=2" "$(requests "$(cluster_ns web-a)" 4 "$vip:80" | tally)"

section "4. remove-kube-proxy-leftovers: a dry run, then the real thing"
netfilter_before=$(netfilter)
sets_before=$(N ipset list -n | sort)
out=$(ip netns exec "$node" "$bin/svc-proxy" remove-kube-proxy-leftovers --dry-run 2>"$work/dry.err")
expect "the dry run exits 0" 0 "$?"
echo "$out" | head -n 5
expect "the dry run lists kube-proxy's jump from nat PREROUTING" yes \
	"$(grep -q '^would remove iptables -t nat -D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES$' <<<"$out" && echo yes || echo no)"
expect "the dry run changes nothing" "$netfilter_before$sets_before" "$(netfilter)$(N ipset list -n | sort)"
out=$(ip netns exec "$node" "$bin/svc-proxy" remove-kube-proxy-leftovers 2>"$work/leftovers.err")
rc=$?
expect "remove-kube-proxy-leftovers exits 0" 0 "$rc"
[ "$rc" = 0 ] || cat "$work/leftovers.err"
echo "removed: $(grep -c '^removed iptables' <<<"$out") iptables and $(grep -c '^removed ip6tables' <<<"$out") ip6tables rules and chains, $(grep -c '^removed ipset' <<<"$out") ipsets"
expect "it removed kube-proxy's chains in both families" "KUBE-SERVICES KUBE-SERVICES" \
	"$(sed -n 's/^removed ip6\{0,1\}tables -t nat -X \(KUBE-SERVICES\)$/\1/p' <<<"$out" | tr '\n' ' ' | sed 's/ $//')"
expect "it removed kube-proxy's 34 sets (17 per family)" 34 "$(grep -c '^removed ipset KUBE-' <<<"$out")"
expect "no chain or jump of kube-proxy's is left (iptables, ip6tables)" "" "$(netfilter | grep -E -- "$kube_proxy_chains( |$)")"
expect "no ipset of kube-proxy's is left" "" "$(N ipset list -n | grep -E '^KUBE-' | grep -v '^KUBE-OPERATOR-ALLOW$')"
expect "kubelet's canary chains stay" "filter mangle nat nat6" \
	"$( (for t in filter mangle nat; do N iptables -t "$t" -S KUBE-KUBELET-CANARY >/dev/null 2>&1 && echo "$t"; done; N ip6tables -t nat -S KUBE-KUBELET-CANARY >/dev/null 2>&1 && echo nat6) | tr '\n' ' ' | sed 's/ $//')"
check "the operator's rule stays" N iptables -C INPUT -p tcp --dport 22 -m comment --comment "operator: ssh" -j ACCEPT
expect "the operator's set stays, with its member" "192.168.60.99" "$(N ipset list KUBE-OPERATOR-ALLOW | sed -n '/^Members:/{n;p}')"
check "svc-proxy's masquerade chain stays" N iptables -t nat -C POSTROUTING -j SVCPROXY-POSTROUTING
check "svc-proxy's loop-back set stays" N ipset list -n SVCPROXY-LOOP-BACK
expect "the IPVS table is unchanged" "$before" "$(table)"
expect "kube-ipvs0 still holds the VIPs" "10.96.50.10/32 10.96.50.20/32 10.96.50.30/32 10.96.50.40/32 192.0.2.50/32 " "$(vips)"
touch "$work/conn/go.3"
run wait_until 30 test -f "$work/conn/answer.3"
expect "the long-lived connection still answers, same pod, same connection" "$first" "$(cat "$work/conn/answer.3")"
answers=$(requests "$(cluster_ns client)" 10 "$vip:80")
expect "10 new requests through the VIP, round robin" "web-a=5 web-b=5" "$(echo "$answers" | tally)"
expect "web-a through the VIP: itself twice (hairpin, svc-proxy's rule alone now), web-b twice" "web-a=2 web-b=2" \
	"$(requests "$(cluster_ns web-a)" 4 "$vip:80" | tally)"
expect "the ClientIP-affinity Service sends the client's 4 requests to one pod" yes \
	"$(t=$(requests "$(cluster_ns client)" 4 "$sticky:81" | tally); [[ $t =~ ^web-[ab]=4$ ]] && echo yes || echo "$t")"
expect "the external IP, from the node: round robin" "web-a=2 web-b=2" "$(requests "$node" 4 "$ext:80" | tally)"
expect "4 requests from outside to the node port (svc-proxy's masquerade rules alone)" "web-a=2 web-b=2" \
	"$(requests "$(cluster_ns outside)" 4 "$node_address:30450" | tally)"

section "5. a second run finds nothing to remove"
out=$(ip netns exec "$node" "$bin/svc-proxy" remove-kube-proxy-leftovers 2>&1)
expect "it exits 0" 0 "$?"
expect "it removes nothing" "" "$(grep '^removed ' <<<"$out")"
expect "it says nothing is left" yes "$(grep -q "nothing of kube-proxy's is left" <<<"$out" && echo yes || echo "$out")"

kill -TERM "$sp_pid"
wait "$sp_pid"
expect "svc-proxy exits 0 on SIGTERM" 0 "$?"
sp_pid=
touch "$work/conn/stop"
wait "$conn_pid"
expect "the long-lived connection never broke" 0 "$?"
conn_pid=
[ "$checks_failed" = 0 ] || show_logs
finish
