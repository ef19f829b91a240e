#!/usr/bin/env bash
# Starts a real Kubernetes control plane for the tests — etcd, kube-apiserver (TLS, RBAC) and
# kube-controller-manager — on 127.0.0.1 only, on free ports picked now, with everything (PKI, etcd
# data, kubeconfigs, logs, state) under DIR. Returns once /readyz answers, the controller-manager is
# healthy and the `default` ServiceAccount exists (so Pods can be created at once).
#
#   tests/k8s/up.sh [--owner PID] DIR
#
#   --owner PID  also starts a watchdog that runs down.sh DIR once PID has exited (a test process
#                killed before its cleanup ran leaves nothing behind)
#
# Writes:
#   DIR/kubeconfig     cluster admin (client cert, O=system:masters), https://127.0.0.1:PORT
#   DIR/kubeconfig-vm  the same credentials, https://10.0.2.100:6443 (the VM guest's forward,
#                      tests/vm/run.sh with VM_APISERVER_PORT=PORT)
#   DIR/env            shell-sourceable: K8S_BIN, *_PORT, *_PID, APISERVER_URL
#   DIR/pki/           ca.{crt,key}, apiserver.*, admin.*, kube-controller-manager.*, sa.{key,pub}
#   DIR/*.log          etcd.log, kube-apiserver.log, kube-controller-manager.log
# Environment: K8S_BIN (default: what tests/k8s/build.sh prints), K8S_START_TIMEOUT (seconds per
# component, default 180). On failure everything started is stopped again and the logs stay.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/k8s/lib.sh
. "$here/lib.sh"

owner=
while (($#)); do
	case $1 in
	--owner) owner=${2:?--owner needs a PID}; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
	-*) k8s_die "unknown option $1" ;;
	*) break ;;
	esac
done
(($# == 1)) || k8s_die "usage: up.sh [--owner PID] DIR"
[ -z "$owner" ] || [[ $owner =~ ^[0-9]+$ ]] || k8s_die "--owner: '$owner' is not a PID"
mkdir -p "$1"
dir=$(realpath "$1")
if [ -f "$dir/env" ]; then
	k8s_load "$dir"
	for pid in "${ETCD_PID:-}" "${APISERVER_PID:-}" "${CONTROLLER_MANAGER_PID:-}"; do
		! k8s_owned "$pid" "$dir" || k8s_die "$dir already holds a running control plane (PID $pid); down.sh it first"
	done
	rm -f "$dir/env"
fi
command -v openssl >/dev/null || k8s_die "openssl not found (scripts/setup.sh installs it)"
command -v curl >/dev/null || k8s_die "curl not found (scripts/setup.sh installs it)"
bin=${K8S_BIN:-$("$here/build.sh")}
for b in etcd kube-apiserver kube-controller-manager kubectl; do
	[ -x "$bin/$b" ] || k8s_die "$bin/$b is missing (K8S_BIN or tests/k8s/build.sh)"
done

started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Roll back on any failure: stop what was started (by recorded PID), keep the logs.
trap 'rc=$?; if [ "$rc" != 0 ] && [ -f "$dir/env" ]; then "$here/down.sh" "$dir" >&2 || true; fi' EXIT

# --- PKI: one CA for serving and client certs; EC P-256 keys (fast to make, PKCS#8 PEM).
pki=$dir/pki
mkdir -p "$pki"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key" 2>/dev/null; }
# cert NAME SUBJECT EXTENSIONS...: NAME.crt signed by the CA, with the given x509v3 extension lines.
cert() {
	local name=$1 subject=$2
	shift 2
	key "$name"
	printf '%s\n' "$@" >"$pki/$name.ext"
	openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
		-CAserial "$pki/ca.srl" -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$pki/$name.ext"
}
key ca
printf '%s\n' basicConstraints=critical,CA:TRUE keyUsage=critical,keyCertSign,cRLSign,digitalSignature \
	subjectKeyIdentifier=hash >"$pki/ca.ext"
openssl req -new -key "$pki/ca.key" -subj /CN=nodenet-test-ca -out "$pki/ca.csr" 2>/dev/null
openssl x509 -req -in "$pki/ca.csr" -signkey "$pki/ca.key" -days 3650 -extfile "$pki/ca.ext" -out "$pki/ca.crt" 2>/dev/null
rm -f "$pki/ca.csr" "$pki/ca.ext"
# The serving cert: loopback for host clients, 10.0.2.100 for the VM guest's forward, and the
# in-cluster names and first ClusterIPs a pod's client would use.
cert apiserver /CN=kube-apiserver basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
	extendedKeyUsage=serverAuth \
	subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.2.100,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1,IP:fd00:96::1
cert admin /O=system:masters/CN=kubernetes-admin basicConstraints=critical,CA:FALSE \
	keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth
# The controller-manager's user is RBAC's system:kube-controller-manager, and in system:masters: all
# controllers share this one identity (see its flags below).
cert kube-controller-manager /O=system:masters/CN=system:kube-controller-manager basicConstraints=critical,CA:FALSE \
	keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth
# The controller-manager's own serving cert, so its /healthz is checked against the same CA.
cert kube-controller-manager-serving /CN=kube-controller-manager basicConstraints=critical,CA:FALSE \
	keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth subjectAltName=IP:127.0.0.1,DNS:localhost
# The front proxy (request-header authentication, kubeadm's front-proxy-ca): delegating servers such
# as the controller-manager read its CA from the API server and complain without one.
key front-proxy-ca
openssl req -new -key "$pki/front-proxy-ca.key" -subj /CN=nodenet-test-front-proxy-ca -out "$pki/front-proxy-ca.csr" 2>/dev/null
printf '%s\n' basicConstraints=critical,CA:TRUE keyUsage=critical,keyCertSign,cRLSign,digitalSignature >"$pki/front-proxy-ca.ext"
openssl x509 -req -in "$pki/front-proxy-ca.csr" -signkey "$pki/front-proxy-ca.key" -days 3650 \
	-extfile "$pki/front-proxy-ca.ext" -out "$pki/front-proxy-ca.crt" 2>/dev/null
rm -f "$pki/front-proxy-ca.csr" "$pki/front-proxy-ca.ext"
key front-proxy-client
openssl req -new -key "$pki/front-proxy-client.key" -subj /CN=front-proxy-client -out "$pki/front-proxy-client.csr" 2>/dev/null
printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth >"$pki/front-proxy-client.ext"
openssl x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
	-CAcreateserial -CAserial "$pki/front-proxy-ca.srl" -days 3650 -extfile "$pki/front-proxy-client.ext" \
	-out "$pki/front-proxy-client.crt" 2>/dev/null
rm -f "$pki/front-proxy-client.csr" "$pki/front-proxy-client.ext"
key sa
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
umask 022
pki_done=$(elapsed)

# --- Free ports, picked below the ephemeral range: a port taken from that range and released again
# could meanwhile become the local port of some outgoing connection (e.g. kube-apiserver's to
# etcd), and the component meant to listen on it would fail. Each candidate must bind now.
read -r etcd_port etcd_peer_port apiserver_port cm_port < <(python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
socks = []
while len(socks) < 4:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(min(10000, low // 2), low)))
        socks.append(s)
    except OSError:
        s.close()
print(*(s.getsockname()[1] for s in socks))')
[ -n "$cm_port" ] || k8s_die "could not pick free ports"

b64() { base64 -w0 <"$1"; }
# kubeconfig FILE SERVER USER: a self-contained kubeconfig (certs embedded), so it means the same
# wherever it is read (the VM guest reads DIR over 9p).
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nodenet-test
  cluster:
    server: $2
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$pki/$3.crt")
    client-key-data: $(b64 "$pki/$3.key")
contexts:
- name: nodenet-test
  context:
    cluster: nodenet-test
    user: $3
current-context: nodenet-test
EOF
	chmod 0600 "$1"
}
kubeconfig "$dir/kubeconfig" "https://127.0.0.1:$apiserver_port" admin
kubeconfig "$dir/kubeconfig-vm" "https://10.0.2.100:6443" admin
kubeconfig "$dir/kube-controller-manager.kubeconfig" "https://127.0.0.1:$apiserver_port" kube-controller-manager

service_cidrs=10.96.0.0/12,fd00:96::/112
{
	printf 'K8S_DIR=%q\nK8S_BIN=%q\n' "$dir" "$bin"
	printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\nCONTROLLER_MANAGER_PORT=%s\n' \
		"$etcd_port" "$etcd_peer_port" "$apiserver_port" "$cm_port"
	printf 'APISERVER_URL=https://127.0.0.1:%s\n' "$apiserver_port"
} >"$dir/env"

# --- etcd: data on whatever DIR is on, no fsync (throwaway state; much faster on a busy disk).
"$bin/etcd" --name=nodenet-test --data-dir="$dir/etcd" \
	--listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
	--listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
	--initial-cluster="nodenet-test=http://127.0.0.1:$etcd_peer_port" \
	--unsafe-no-fsync --log-level=warn </dev/null >"$dir/etcd.log" 2>&1 &
k8s_set "$dir" ETCD_PID $!
k8s_load "$dir"
end=$((SECONDS + ${K8S_START_TIMEOUT:-180}))
until curl -fsS --max-time 5 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; do
	k8s_running "$ETCD_PID" || { k8s_tail_log etcd "$dir"; k8s_die "etcd exited during start"; }
	((SECONDS < end)) || { k8s_tail_log etcd "$dir"; k8s_die "etcd not healthy after ${K8S_START_TIMEOUT:-180} s"; }
	sleep 0.1
done
etcd_done=$(elapsed)

# --- kube-apiserver. The flags go to a file so apiserver.sh restarts it identically.
# --endpoint-reconciler-type=none: the `kubernetes` Service's endpoint would be a loopback address,
# which the API rejects every 10 s otherwise. --shutdown-watch-termination-grace-period: on TERM,
# end open watches (clients then reconnect) instead of waiting 60 s for them to go idle: a stop
# takes 1 s instead of 61 s (measured). --allow-privileged: as kubeadm and every node-network
# DaemonSet (kube-proxy's, svc-proxy's) need.
cat >"$dir/apiserver.args" <<EOF
--etcd-servers=http://127.0.0.1:$etcd_port
--bind-address=127.0.0.1
--advertise-address=127.0.0.1
--secure-port=$apiserver_port
--tls-cert-file=$pki/apiserver.crt
--tls-private-key-file=$pki/apiserver.key
--client-ca-file=$pki/ca.crt
--authorization-mode=Node,RBAC
--allow-privileged=true
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--service-account-key-file=$pki/sa.pub
--service-account-signing-key-file=$pki/sa.key
--service-cluster-ip-range=$service_cidrs
--endpoint-reconciler-type=none
--shutdown-watch-termination-grace-period=2s
--requestheader-client-ca-file=$pki/front-proxy-ca.crt
--requestheader-allowed-names=front-proxy-client
--requestheader-username-headers=X-Remote-User
--requestheader-group-headers=X-Remote-Group
--requestheader-extra-headers-prefix=X-Remote-Extra-
--proxy-client-cert-file=$pki/front-proxy-client.crt
--proxy-client-key-file=$pki/front-proxy-client.key
EOF
k8s_start_apiserver "$dir" || k8s_die "kube-apiserver did not become ready"
apiserver_done=$(elapsed)

# --- kube-controller-manager. The controllers share the controller-manager's identity instead of
# one ServiceAccount each (kubeadm's --use-service-account-credentials): ready in 4 s instead of 9 s
# (measured), and nothing the tests check depends on the controllers' own identities. No node
# lifecycle controller: the tests' Nodes have no kubelet, and it would taint them and evict their
# Pods.
"$bin/kube-controller-manager" \
	--kubeconfig="$dir/kube-controller-manager.kubeconfig" \
	--authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
	--authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$cm_port" \
	--tls-cert-file="$pki/kube-controller-manager-serving.crt" --tls-private-key-file="$pki/kube-controller-manager-serving.key" \
	--leader-elect=false --use-service-account-credentials=false \
	--service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
	--cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
	--controllers='*,-node-lifecycle-controller' \
	--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16,fd00:244::/56 \
	--node-cidr-mask-size-ipv4=24 --node-cidr-mask-size-ipv6=64 \
	--service-cluster-ip-range="$service_cidrs" \
	</dev/null >"$dir/kube-controller-manager.log" 2>&1 &
k8s_set "$dir" CONTROLLER_MANAGER_PID $!
k8s_load "$dir"
k8s_wait_https kube-controller-manager "$CONTROLLER_MANAGER_PID" "$dir" "https://127.0.0.1:$cm_port/healthz" ||
	k8s_die "kube-controller-manager did not become healthy"
# The ServiceAccount admission plugin refuses Pods until the namespace's `default` ServiceAccount
# exists; the controller-manager creates it shortly after start.
end=$((SECONDS + ${K8S_START_TIMEOUT:-180}))
until curl -fsS --max-time 5 -o /dev/null --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
	"https://127.0.0.1:$apiserver_port/api/v1/namespaces/default/serviceaccounts/default" 2>/dev/null; do
	k8s_running "$CONTROLLER_MANAGER_PID" || { k8s_tail_log kube-controller-manager "$dir"; k8s_die "kube-controller-manager exited"; }
	((SECONDS < end)) || { k8s_tail_log kube-controller-manager "$dir"; k8s_die "no default ServiceAccount after ${K8S_START_TIMEOUT:-180} s"; }
	sleep 0.1
done

if [ -n "$owner" ]; then
	setsid "$here/watchdog.sh" "$dir/env" "$owner" </dev/null >>"$dir/watchdog.log" 2>&1 &
	k8s_set "$dir" WATCHDOG_PID $!
fi
echo "k8s: up in $(elapsed) s (pki $pki_done, etcd $etcd_done, kube-apiserver $apiserver_done); API https://127.0.0.1:$apiserver_port, kubeconfig $dir/kubeconfig" >&2
