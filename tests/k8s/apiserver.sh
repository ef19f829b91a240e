#!/usr/bin/env bash
# Stops or (re)starts only the kube-apiserver of the control plane up.sh started in DIR, with the
# same port and flags (DIR/apiserver.args): for tests of clients that must survive an API server
# restart. etcd and the controller-manager keep running; start waits for /readyz.
#
#   tests/k8s/apiserver.sh DIR stop|start|restart
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/k8s/lib.sh
. "$here/lib.sh"

(($# == 2)) || k8s_die "usage: apiserver.sh DIR stop|start|restart"
[ -d "$1" ] || k8s_die "$1 is not a directory"
dir=$(realpath "$1")
k8s_load "$dir"
stop() {
	k8s_stop kube-apiserver "${APISERVER_PID:-}" "$dir" || k8s_die "kube-apiserver (PID $APISERVER_PID) did not stop"
	k8s_set "$dir" APISERVER_PID ""
}
start() { k8s_start_apiserver "$dir" || k8s_die "kube-apiserver did not become ready again"; }
case $2 in
stop) stop ;;
start) start ;;
restart) stop; start ;;
*) k8s_die "apiserver.sh: unknown action '$2' (stop, start or restart)" ;;
esac
