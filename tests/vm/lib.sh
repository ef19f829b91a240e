# shellcheck shell=bash
# Helpers shared by the VM scenario scripts: PASS/FAIL reporting, namespaces, pod HTTP servers.
# Every check prints one line starting with PASS or FAIL (scripts/test.sh counts them).

checks_failed=0

# Announces a step, with the seconds since the script started (where a slow run spends its time).
section() { echo "== [${SECONDS}s] $*"; }

pass() { echo "PASS $*"; }
fail() {
	echo "FAIL $*"
	checks_failed=$((checks_failed + 1))
}

# expect NAME EXPECTED ACTUAL: PASS when equal, FAIL naming both otherwise.
expect() {
	if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: expected '$2', got '$3'"; fi
}

# check NAME CMD...: PASS when CMD succeeds; FAIL with its output otherwise.
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name: '$*' failed: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}

# check_fails NAME CMD...: PASS when CMD fails (a step the article shows failing before its fix).
check_fails() {
	local name=$1
	shift
	if "$@" >/dev/null 2>&1; then fail "$name: '$*' succeeded"; else pass "$name"; fi
}

# Prints how many checks failed and exits non-zero if any did.
finish() {
	if [ "$checks_failed" = 0 ]; then
		echo "all checks passed"
		exit 0
	fi
	echo "$checks_failed check(s) failed"
	exit 1
}

require_root() {
	[ "$(id -u)" = 0 ] || {
		echo "FAIL $0 must run as root (network namespaces, IPVS)"
		exit 1
	}
}

# Runs a command in a named network namespace. nsenter, not `ip netns exec`: one exec less (process
# start-up dominates under emulation); /sys still shows the caller's namespace, which the
# observing tools (ip, ipvsadm, ipset, iptables, curl, sysctl) never read.
in_ns() {
	local ns=$1
	shift
	nsenter --net="/run/netns/$ns" "$@"
}

# http_get NETNS URL: the body of one request from NETNS, or failure; bounded so a black hole
# cannot hang the run.
http_get() {
	in_ns "$1" curl -sS --fail --connect-timeout 5 --max-time 10 "$2"
}

# start_pod_server NETNS NAME DIR: serves DIR/index.html (containing NAME) on :8080 in NETNS;
# prints the server's PID. Python's start-up takes seconds under TCG: callers wait_http afterwards.
start_pod_server() {
	local ns=$1 name=$2 dir=$3
	mkdir -p "$dir"
	echo "$name" >"$dir/index.html"
	# Not through in_ns: $! must be the server itself, so that kill reaches it.
	nsenter --net="/run/netns/$ns" python3 -m http.server 8080 --bind 0.0.0.0 --directory "$dir" >"$dir/server.log" 2>&1 &
	echo $!
}

# wait_http NETNS URL EXPECTED: waits (up to 120 s) until URL answers EXPECTED from NETNS. Readiness,
# not a timed assertion: it only bounds how long a server that never starts can stall the run.
wait_http() {
	local i body
	for ((i = 0; i < 600; i++)); do
		body=$(in_ns "$1" curl -s --connect-timeout 1 --max-time 2 "$2" 2>/dev/null) && [ "$body" = "$3" ] && return 0
		sleep 0.2
	done
	echo "wait_http: $2 from $1 never answered '$3' (last: '$body')" >&2
	return 1
}

# --- The scenario scripts' node, pods and clients. They use the caller's $node (the node's
# namespace), $tag (prefix of the pod namespaces), $work (scratch directory), $here (this
# directory) and array server_pid.

N() { in_ns "$node" "$@"; }
# The project's binaries run with the node's /sys too, as they would on a node.
N_exec() { ip netns exec "$node" "$@"; }
show_proxy_log() { [ -f "$work/svc-proxy.log" ] && { echo "--- svc-proxy log (tail)"; tail -n 30 "$work/svc-proxy.log"; }; }
# A setup step that fails makes every later check meaningless.
run() { "$@" || { fail "setup: '$*' failed"; show_proxy_log; finish; }; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# The runtime's part of a pod: its namespace and its server, listening before the network is added
# (the server starts slowly under emulation, and a pod is an endpoint as soon as it is attached).
# start_pod NAME [BIND]: BIND is the server's listening address (default 0.0.0.0; :: for IPv6).
start_pod() {
	local pod=$1 bind=${2:-0.0.0.0} i
	ip netns add "$tag-$pod" || return 1
	# Not through a shell function: $! must be the server itself, so that kill reaches it.
	nsenter --net="/run/netns/$tag-$pod" python3 "$here/pod-server.py" "$pod" 8080 "$bind" >"$work/$pod.log" 2>&1 &
	server_pid[$pod]=$!
	for ((i = 0; i < 600; i++)); do
		[ -n "$(in_ns "$tag-$pod" ss -Hltn 'sport = :8080')" ] && return 0
		sleep 0.2
	done
	echo "start_pod: $pod's server never listened" >&2
	return 1
}

# The pod's address as cni-bridge's ADD result reports it.
result_ip() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])' <"$1"; }

# wait_until SECS CMD...: polls CMD until it succeeds; fails once SECS have passed (a bound on a
# stall, not the assertion).
wait_until() {
	local end=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || return 1
		sleep 0.2
	done
}

# wait_every SECS INTERVAL CMD...: wait_until polling every INTERVAL seconds, for a CMD that
# starts processes (curl, kubectl) while the awaited program needs the CPU: under TCG a tight
# poll steals much of it.
wait_every() {
	local end=$((SECONDS + $1)) interval=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || return 1
		sleep "$interval"
	done
}

# requests NETNS COUNT [HOST:PORT]: COUNT sequential requests to HOST:PORT (default $vip:8080;
# [ADDR]:PORT for IPv6), each on a new connection, from one curl process (start-up dominates under
# emulation); prints each answer, "-" for a failed one, and with SCENARIO_VERBOSE=1 also one line
# per request on stderr.
requests() {
	local urls=() i=0 a target=${3:-$vip:8080}
	for ((i = 0; i < $2; i++)); do urls+=("http://$target/"); done
	i=0
	in_ns "$1" curl -sS -g --connect-timeout 5 --max-time 10 -H 'Connection: close' -w '%{http_code}\n' "${urls[@]}" 2>/dev/null |
		awk '/^[0-9][0-9][0-9]$/ { print ($1 == 200 && body != "" ? body : "-"); body = ""; next } { body = $0 }' |
		while read -r a; do
			i=$((i + 1))
			[ "${SCENARIO_VERBOSE:-}" = 1 ] && echo "    curl $target from ${1#"$tag-"} #$i -> $a" >&2
			echo "$a"
		done
}
# Prints "name=count ..." for a list of answers.
tally() { sort | uniq -c | awk '{ printf "%s%s=%d", (NR > 1 ? " " : ""), $2, $1 }'; }

# --- The host's API server from a node namespace in the guest (run.sh with VM_APISERVER_PORT: the
# guest's eth0 reaches 10.0.2.100:6443 and nothing else). The node namespace gets a veth into the
# guest's root namespace (throwaway, so changing it is fine), a host route to 10.0.2.100 only, and
# its traffic is masqueraded to eth0's address there, as a node's traffic to an off-node API server
# would be.
apiserver_vip=10.0.2.100
apiserver_link_net=169.254.123

# apiserver_route NETNS: as above; the node side is `apiserver0` with 169.254.123.(4i+2)/30, the
# guest side `k8sapi<i>` with .(4i+1). Undone by apiserver_unroute NETNS (deleting NETNS removes
# the veth but not the masquerade rule).
apiserver_route() {
	local ns=$1 i
	[ -e /sys/class/net/eth0 ] || { echo "apiserver_route: the guest has no eth0 (run.sh needs VM_APISERVER_PORT)" >&2; return 1; }
	for ((i = 0; i < 64; i++)); do
		ip link add "k8sapi$i" type veth peer name apiserver0 netns "$ns" 2>/dev/null && break
	done
	((i < 64)) || { echo "apiserver_route: no free k8sapi<i> link" >&2; return 1; }
	echo "$i" >"/run/apiserver-route-$ns"
	ip addr add "$apiserver_link_net.$((4 * i + 1))/30" dev "k8sapi$i" &&
		ip link set "k8sapi$i" up &&
		in_ns "$ns" ip addr add "$apiserver_link_net.$((4 * i + 2))/30" dev apiserver0 &&
		in_ns "$ns" ip link set apiserver0 up &&
		in_ns "$ns" ip route add "$apiserver_vip/32" via "$apiserver_link_net.$((4 * i + 1))" &&
		sysctl -qw net.ipv4.ip_forward=1 &&
		iptables -t nat -A POSTROUTING -s "$apiserver_link_net.$((4 * i))/30" -o eth0 -j MASQUERADE
}

# apiserver_gateway NETNS: the guest-side address NETNS's route to the API server goes through.
apiserver_gateway() { echo "$apiserver_link_net.$((4 * $(cat "/run/apiserver-route-$1") + 1))"; }

apiserver_unroute() {
	local ns=$1 i
	[ -f "/run/apiserver-route-$ns" ] || return 0
	i=$(cat "/run/apiserver-route-$ns")
	iptables -t nat -D POSTROUTING -s "$apiserver_link_net.$((4 * i))/30" -o eth0 -j MASQUERADE 2>/dev/null
	ip link del "k8sapi$i" 2>/dev/null
	rm -f "/run/apiserver-route-$ns"
}
