#!/usr/bin/env bash
# Sets everything up (Debian 12, as root) and runs the scenario visibly: two pods attached by
# cni-bridge, svc-proxy serving app-service on 10.100.100.100:8080, printing which pod answered
# each request, then a pod added and one removed, a restart, drift repair and cleanup
# (tests/vm/e2e-scenario.sh, steps 1-7 of issue 4).
#
# Natively when the running kernel has IPVS and dummy links, inside a throwaway "node" network
# namespace (the host's own network is untouched); otherwise inside a QEMU VM booting Debian's
# kernel (tests/vm/run.sh). SCENARIO_IN_VM=1 forces the VM.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scenario.sh: run as root (network namespaces, IPVS)" >&2; exit 1; }

step() { echo; echo "### $*"; }

step "setup: Debian packages and toolchain (scripts/setup.sh)"
./scripts/setup.sh

step "build: cni-bridge and svc-proxy (release)"
cargo build --release -p cni-bridge -p svc-proxy
export BIN_DIR=${CARGO_TARGET_DIR:-$PWD/target}/release
export SCENARIO_VERBOSE=1

# IPVS present (or loadable) and a dummy link creatable, tried in a namespace of our own.
native_kernel_ok() {
	[ "${SCENARIO_IN_VM:-}" != 1 ] || return 1
	[ -e /proc/net/ip_vs ] || modprobe ip_vs 2>/dev/null || return 1
	local probe=scenario-probe-$$ ok=1
	ip netns add "$probe" || return 1
	ip -n "$probe" link add probe0 type dummy 2>/dev/null || ok=0
	ip -n "$probe" link add probe1 type bridge 2>/dev/null || ok=0
	ip netns exec "$probe" ipvsadm -Ln >/dev/null 2>&1 || ok=0
	ip netns del "$probe"
	[ "$ok" = 1 ]
}

if native_kernel_ok; then
	step "run: natively on this kernel ($(uname -r)), inside a throwaway node namespace"
	exec tests/vm/e2e-scenario.sh
else
	step "run: this kernel ($(uname -r)) lacks IPVS or dummy links; booting Debian's kernel in a VM (about a minute)"
	VM_ENV=SCENARIO_VERBOSE exec tests/vm/run.sh tests/vm/e2e-scenario.sh
fi
