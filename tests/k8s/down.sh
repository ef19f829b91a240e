#!/usr/bin/env bash
# Stops the control plane up.sh started in DIR, by the PIDs recorded in DIR/env (never by name):
# TERM, up to 15 s, then KILL; a PID whose process no longer names DIR is left alone. DIR and its
# logs stay (the caller owns DIR). Idempotent: a second run, or a DIR never brought up, is a no-op.
#
#   tests/k8s/down.sh DIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/k8s/lib.sh
. "$here/lib.sh"

(($# == 1)) || k8s_die "usage: down.sh DIR"
[ -d "$1" ] || exit 0
dir=$(realpath "$1")
[ -f "$dir/env" ] || exit 0
k8s_load "$dir"
rc=0
# The watchdog runs this script itself (exec) once its owner is gone: it must not stop itself.
if [ "${WATCHDOG_PID:-}" != "$$" ]; then k8s_stop watchdog "${WATCHDOG_PID:-}" "$dir" || rc=1; fi
k8s_stop kube-controller-manager "${CONTROLLER_MANAGER_PID:-}" "$dir" || rc=1
k8s_stop kube-apiserver "${APISERVER_PID:-}" "$dir" || rc=1
k8s_stop etcd "${ETCD_PID:-}" "$dir" || rc=1
if [ "$rc" = 0 ]; then
	for name in WATCHDOG_PID CONTROLLER_MANAGER_PID APISERVER_PID ETCD_PID; do k8s_set "$dir" "$name" ""; done
fi
exit "$rc"
