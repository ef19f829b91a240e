#!/usr/bin/env bash
# Started by `up.sh --owner PID DIR`: once PID has exited, stops DIR's control plane (down.sh), so a
# test process killed before its own cleanup ran leaves no etcd or API server behind.
#
#   tests/k8s/watchdog.sh DIR/env PID     (its command line names DIR, which down.sh checks)
set -uo pipefail
env_file=$1 owner=$2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
exec "$(dirname "${BASH_SOURCE[0]}")/down.sh" "$(dirname "$env_file")"
