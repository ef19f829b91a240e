# shellcheck shell=bash
# A small Kubernetes cluster inside the VM guest, its control plane on the host (run.sh with
# VM_APISERVER_PORT; K8S_DIR and K8S_BIN as ControlPlane::vm_command passes them):
#
#   - underlays: bridges in the guest's root namespace (throwaway, so changing it is fine), each
#     with the gateway NET.1/24 (and NET6::1/64);
#   - nodes: network namespaces on an underlay, with eth0 NET.HOST/24 (NET6::HOST/64), a default
#     route via the gateway, the route to the API server (lib.sh's apiserver_route), and a Node
#     object whose InternalIP is that address; the controller-manager's node IPAM gives it
#     spec.podCIDRs;
#   - pods: a namespace per pod with tests/vm/pod-server.py on :8080, attached by cni-bridge in
#     its node's namespace with the node's pod CIDR as the IPAM range, and a Pod object bound to
#     the node whose status is set as a kubelet would (Running, Ready, cni-bridge's address);
#   - clients: a namespace on an underlay without anything Kubernetes (an outside machine);
#   - cluster_teardown: everything above removed, API objects included.
#
# Source lib.sh first. Process starts are what a run under TCG pays for (kubectl alone takes
# 1-2 s): ip commands go out as `ip -batch`, Nodes and Pods are queued and applied with one
# kubectl each (cluster_commit_nodes, cluster_commit_pods), pod statuses with one server-side
# apply. Every function returns non-zero with a message on stderr when it fails.
#
#   cluster_init TAG WORK               names (netns TAG-*, API namespaces given by callers), scratch dir
#   cluster_underlay NAME NET [NET6]    bridge NAME with NET.1/24 (NET6::1/64), e.g. 192.168.50 fd00:50
#   cluster_node NODE UNDERLAY HOST     netns + Node object NODE (queued) at NET.HOST
#   cluster_netns NAME UNDERLAY HOST    the same namespace plumbing without a Node object
#   cluster_client NAME UNDERLAY HOST   an outside machine (no API route, no Node)
#   cluster_node_object NODE IP         queue a Node object only (a node not simulated here)
#   cluster_commit_nodes                apply the queued Nodes, wait for their pod CIDRs
#   cluster_pod NODE POD NAMESPACE [LABEL=VALUE...]   queue a pod (its server starts now)
#   cluster_commit_pods                 attach the queued pods, create their Pods, set them Ready
#   cluster_set_ready True|False POD... the kubelet's Ready condition, one apply for all
#   cluster_remove NAME                 one namespace (and its pod server, API route) early
#   cluster_teardown                    remove everything (call it from the caller's EXIT trap)
#
# After the commits: cluster_ns NAME (namespace of a node, client or pod), node_ip[NODE],
# node_ip6[NODE], node_cidr[NODE], node_cidr6[NODE], pod_ip[POD], pod_ip6[POD], pod_node[POD].
# cluster_kubectl ARGS runs kubectl from the guest's root namespace as the cluster admin.
# CLUSTER_IPV6=1 gives pods an IPv6 address too (from the node's IPv6 pod CIDR).

declare -A underlay_net=() underlay_net6=() node_ip=() node_ip6=() node_cidr=() node_cidr6=()
declare -A pod_ip=() pod_ip6=() pod_node=() pod_namespace=() pod_labels=() pod_pid=()
cluster_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster_tag=
cluster_work=
cluster_cni_bin=
cluster_links=0
cluster_bridges=()
cluster_namespaces=() # network namespaces, in creation order
cluster_api_nodes=()  # Node objects created (or queued)
cluster_api_namespaces=()
cluster_pending_nodes=()
cluster_pending_pods=()

cluster_init() {
	cluster_tag=$1
	cluster_work=$2
	cluster_cni_bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$cluster_repo/target}/debug}
	[ -x "$cluster_cni_bin/cni-bridge" ] || { echo "cluster_init: $cluster_cni_bin/cni-bridge is not built" >&2; return 1; }
	mkdir -p "$cluster_work" || return 1
	[ -n "${K8S_DIR:-}" ] && [ -f "$K8S_DIR/kubeconfig-vm" ] || { echo "cluster_init: K8S_DIR holds no kubeconfig-vm" >&2; return 1; }
	[ -x "${K8S_BIN:-}/kubectl" ] || { echo "cluster_init: no kubectl in K8S_BIN" >&2; return 1; }
	# The guest's eth0 reaches 10.0.2.100 directly; node namespaces get apiserver_route.
	[ -e /sys/class/net/eth0 ] || { echo "cluster_init: the guest has no eth0 (run.sh needs VM_APISERVER_PORT)" >&2; return 1; }
}

cluster_kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$K8S_DIR/kubeconfig-vm" --cache-dir "$cluster_work/kubectl-cache" "$@"; }

cluster_ns() { echo "$cluster_tag-$1"; }

# Sets `link` to a new link name in the guest's root namespace (at most 15 characters; not
# through $(...), whose subshell would lose the count).
cluster_next_link() {
	cluster_links=$((cluster_links + 1))
	link=cl$$x$cluster_links
}

cluster_underlay() {
	local name=$1 net=$2 net6=${3:-}
	ip link add "$name" type bridge || return 1
	cluster_bridges+=("$name")
	{
		echo "addr add $net.1/24 dev $name"
		[ -z "$net6" ] || echo "addr add $net6::1/64 dev $name nodad"
		echo "link set $name up"
	} | ip -batch - || return 1
	underlay_net[$name]=$net
	underlay_net6[$name]=$net6
}

# cluster_plumb NAME UNDERLAY HOST: the namespace, its eth0 on the bridge, addresses, default route.
cluster_plumb() {
	local name=$1 underlay=$2 host=$3 ns link net net6
	ns=$(cluster_ns "$name")
	net=${underlay_net[$underlay]:-}
	[ -n "$net" ] || { echo "cluster: no underlay $underlay" >&2; return 1; }
	net6=${underlay_net6[$underlay]}
	cluster_next_link
	ip netns add "$ns" || return 1
	cluster_namespaces+=("$name")
	{
		echo "link add $link type veth peer name eth0 netns $ns"
		echo "link set $link master $underlay up"
	} | ip -batch - || return 1
	{
		echo "link set lo up"
		echo "link set eth0 up"
		echo "addr add $net.$host/24 dev eth0"
		echo "route add default via $net.1"
		if [ -n "$net6" ]; then
			echo "addr add $net6::$host/64 dev eth0 nodad"
			echo "route add default via $net6::1"
		fi
	} | ip -n "$ns" -batch - || return 1
	node_ip[$name]=$net.$host
	node_ip6[$name]=${net6:+$net6::$host}
}

cluster_netns() {
	cluster_plumb "$@" && apiserver_route "$(cluster_ns "$1")"
}

cluster_client() { cluster_plumb "$@"; }

cluster_node_object() {
	local node=$1 ip=$2 ip6=${3:-}
	cluster_api_nodes+=("$node")
	local doc="apiVersion: v1
kind: Node
metadata: {name: $node, labels: {kubernetes.io/hostname: $node}}
status:
  addresses:
  - {type: InternalIP, address: $ip}"
	[ -z "$ip6" ] || doc="$doc
  - {type: InternalIP, address: \"$ip6\"}"
	cluster_pending_nodes+=("$doc
  - {type: Hostname, address: $node}")
}

cluster_node() {
	local node=$1
	cluster_netns "$@" || return 1
	cluster_node_object "$node" "${node_ip[$node]}" "${node_ip6[$node]}"
}

# The Nodes queued so far, in one apply (a Node's status is kept on create, as a kubelet's
# registration does); then their pod CIDRs from node IPAM.
cluster_commit_nodes() {
	local i name cidrs c missing listing
	((${#cluster_pending_nodes[@]})) || return 0
	for ((i = 0; i < ${#cluster_pending_nodes[@]}; i++)); do
		echo "---"
		echo "${cluster_pending_nodes[$i]}"
	done >"$cluster_work/nodes.yaml"
	cluster_pending_nodes=()
	cluster_kubectl apply -f "$cluster_work/nodes.yaml" >/dev/null || return 1
	# No process substitution: the guest has no /dev/fd.
	for ((i = 0; i < 240; i++)); do
		listing=$(cluster_kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDRs}{"\n"}{end}') || return 1
		while read -r name cidrs; do
			for c in ${cidrs//,/ }; do
				case $c in *:*) node_cidr6[$name]=$c ;; *) node_cidr[$name]=$c ;; esac
			done
		done <<<"$(tr -d '[]"' <<<"$listing")"
		missing=0
		for name in "${cluster_api_nodes[@]}"; do [ -n "${node_cidr[$name]:-}" ] || missing=1; done
		((missing)) || return 0
		sleep 0.5
	done
	echo "cluster_commit_nodes: node IPAM gave no pod CIDR to some of ${cluster_api_nodes[*]}" >&2
	return 1
}

# cluster_pod NODE POD NAMESPACE [LABEL=VALUE...]: the pod's namespace and server now (Python
# starts slowly under TCG: the commit waits for all servers at once), the rest at the commit.
cluster_pod() {
	local node=$1 pod=$2 namespace=$3 ns
	shift 3
	[ -n "${node_cidr[$node]:-}" ] || { echo "cluster_pod: node $node has no pod CIDR (cluster_commit_nodes first)" >&2; return 1; }
	ns=$(cluster_ns "$pod")
	ip netns add "$ns" || return 1
	cluster_namespaces+=("$pod")
	nsenter --net="/run/netns/$ns" python3 "$cluster_repo/tests/vm/pod-server.py" "$pod" 8080 "$([ "${CLUSTER_IPV6:-}" = 1 ] && echo :: || echo 0.0.0.0)" \
		>"$cluster_work/$pod.log" 2>&1 &
	pod_pid[$pod]=$!
	pod_node[$pod]=$node
	pod_namespace[$pod]=$namespace
	pod_labels[$pod]="$*"
	cluster_pending_pods+=("$pod")
}

# The first address of a CIDR (the bridge's gateway): 10.244.1.0/24 -> 10.244.1.1.
cluster_gateway() {
	python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$1"
}

cluster_cni_config() {
	local node=$1 gw gw6 ranges
	gw=$(cluster_gateway "${node_cidr[$node]}") || return 1
	ranges="[{\"subnet\":\"${node_cidr[$node]}\",\"gateway\":\"$gw\"}]"
	if [ "${CLUSTER_IPV6:-}" = 1 ]; then
		[ -n "${node_cidr6[$node]:-}" ] || { echo "cluster: node $node has no IPv6 pod CIDR" >&2; return 1; }
		gw6=$(cluster_gateway "${node_cidr6[$node]}") || return 1
		ranges="$ranges,[{\"subnet\":\"${node_cidr6[$node]}\",\"gateway\":\"$gw6\"}]"
	fi
	# The cluster's pod CIDRs (up.sh's --cluster-cidr) are not masqueraded: pod to pod across
	# nodes keeps the sender's address (the Kubernetes network model); pod to outside is SNATed.
	cat <<EOF
{"cniVersion":"1.0.0","name":"$cluster_tag-$node","type":"cni-bridge","bridge":"cni0",
 "isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,
 "nonMasqueradeCIDRs":["10.244.0.0/16","fd00:244::/56"],
 "stateDir":"$cluster_work/cni-state-$node",
 "ipam":{"type":"cni-bridge-ipam","dataDir":"$cluster_work/cni-ipam-$node","ranges":[$ranges]}}
EOF
}

# Status documents (server-side apply on the status subresource) for pods: Running, Ready=READY.
cluster_status_docs() {
	local ready=$1 pod ips
	shift
	for pod in "$@"; do
		ips="{ip: ${pod_ip[$pod]}}"
		[ -z "${pod_ip6[$pod]:-}" ] || ips="$ips, {ip: \"${pod_ip6[$pod]}\"}"
		cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: ${pod_namespace[$pod]}}
status:
  phase: Running
  hostIP: ${node_ip[${pod_node[$pod]}]}
  podIP: ${pod_ip[$pod]}
  podIPs: [$ips]
  conditions:
  - {type: PodScheduled, status: "True"}
  - {type: Initialized, status: "True"}
  - {type: ContainersReady, status: "$ready"}
  - {type: Ready, status: "$ready"}
EOF
	done
}

cluster_set_ready() {
	local ready=$1
	shift
	cluster_status_docs "$ready" "$@" >"$cluster_work/status.yaml"
	cluster_kubectl apply --server-side --subresource=status --field-manager=nodenet-kubelet \
		--force-conflicts -f "$cluster_work/status.yaml" >/dev/null
}

cluster_commit_pods() {
	local pod ns i result ips node label labels namespaces=()
	((${#cluster_pending_pods[@]})) || return 0
	# A pod is an endpoint as soon as it is Ready: its server must listen before that.
	for pod in "${cluster_pending_pods[@]}"; do
		ns=$(cluster_ns "$pod")
		for ((i = 0; i < 600; i++)); do
			[ -n "$(in_ns "$ns" ss -Hltn 'sport = :8080')" ] && break
			kill -0 "${pod_pid[$pod]}" 2>/dev/null || { echo "cluster: $pod's server exited: $(tail -n 3 "$cluster_work/$pod.log")" >&2; return 1; }
			sleep 0.2
		done
		((i < 600)) || { echo "cluster: $pod's server never listened" >&2; return 1; }
	done
	for pod in "${cluster_pending_pods[@]}"; do
		node=${pod_node[$pod]}
		result=$(cluster_cni_config "$node" | ip netns exec "$(cluster_ns "$node")" env CNI_COMMAND=ADD \
			CNI_CONTAINERID="$cluster_tag-$pod" CNI_NETNS="/run/netns/$(cluster_ns "$pod")" CNI_IFNAME=eth0 \
			CNI_PATH="$cluster_cni_bin" CNI_ARGS="K8S_POD_NAMESPACE=${pod_namespace[$pod]};K8S_POD_NAME=$pod;IgnoreUnknown=1" \
			"$cluster_cni_bin/cni-bridge") || { echo "cluster: cni-bridge ADD of $pod failed: $result" >&2; return 1; }
		ips=$(python3 -c 'import json, sys
ips = [i["address"].split("/")[0] for i in json.load(sys.stdin)["ips"]]
print(next((i for i in ips if ":" not in i), ""), next((i for i in ips if ":" in i), ""))' <<<"$result") || return 1
		read -r "pod_ip[$pod]" "pod_ip6[$pod]" <<<"$ips"
		[ -n "${pod_ip[$pod]}" ] || { echo "cluster: cni-bridge gave $pod no IPv4 address: $result" >&2; return 1; }
	done
	for pod in "${cluster_pending_pods[@]}"; do
		case " ${namespaces[*]} " in *" ${pod_namespace[$pod]} "*) ;; *) namespaces+=("${pod_namespace[$pod]}") ;; esac
	done
	{
		for ns in "${namespaces[@]}"; do
			printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$ns"
			case " ${cluster_api_namespaces[*]} " in *" $ns "*) ;; *) cluster_api_namespaces+=("$ns") ;; esac
		done
		for pod in "${cluster_pending_pods[@]}"; do
			labels=
			for label in ${pod_labels[$pod]}; do labels="$labels${labels:+, }${label%%=*}: \"${label#*=}\""; done
			cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: ${pod_namespace[$pod]}, labels: {$labels}}
spec:
  nodeName: ${pod_node[$pod]}
  containers: [{name: server, image: registry.invalid/pod-server:1, ports: [{name: http, containerPort: 8080}]}]
EOF
		done
	} >"$cluster_work/pods.yaml"
	cluster_kubectl apply -f "$cluster_work/pods.yaml" >/dev/null || return 1
	cluster_set_ready True "${cluster_pending_pods[@]}" || return 1
	cluster_pending_pods=()
}

# cluster_remove NAME: one node, client or pod namespace (its server, its API route) before the
# teardown; its API objects stay.
cluster_remove() {
	local name=$1 ns keep=() n
	ns=$(cluster_ns "$name")
	if [ -n "${pod_pid[$name]:-}" ]; then
		kill "${pod_pid[$name]}" 2>/dev/null
		wait "${pod_pid[$name]}" 2>/dev/null
		unset "pod_pid[$name]"
	fi
	apiserver_unroute "$ns"
	ip netns del "$ns" || return 1
	for n in "${cluster_namespaces[@]}"; do [ "$n" = "$name" ] || keep+=("$n"); done
	cluster_namespaces=("${keep[@]}")
}

# Everything the functions above made, API objects included; safe to call twice.
cluster_teardown() {
	local name ns
	for name in "${!pod_pid[@]}"; do kill "${pod_pid[$name]}" 2>/dev/null; done
	for name in "${!pod_pid[@]}"; do wait "${pod_pid[$name]}" 2>/dev/null; done
	pod_pid=()
	# Pods bound to a Node without a kubelet never finish a graceful deletion.
	for ns in "${cluster_api_namespaces[@]}"; do
		cluster_kubectl delete pods --all -n "$ns" --force --grace-period=0 >/dev/null 2>&1
	done
	((${#cluster_api_namespaces[@]} == 0)) || cluster_kubectl delete namespace "${cluster_api_namespaces[@]}" --wait=false >/dev/null 2>&1
	((${#cluster_api_nodes[@]} == 0)) || cluster_kubectl delete node "${cluster_api_nodes[@]}" --wait=false --ignore-not-found >/dev/null 2>&1
	cluster_api_namespaces=()
	cluster_api_nodes=()
	for name in "${cluster_namespaces[@]}"; do
		ns=$(cluster_ns "$name")
		apiserver_unroute "$ns"
		ip netns del "$ns" 2>/dev/null
	done
	cluster_namespaces=()
	for name in "${cluster_bridges[@]}"; do ip link del "$name" 2>/dev/null; done
	cluster_bridges=()
}
