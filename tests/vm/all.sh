#!/usr/bin/env bash
# Every VM test, in one boot (boots dominate the run time): the seed article's commands, nodenet's
# IPVS kernel tests, then the scenario end to end with the project's binaries (IPv4), and its
# Service over IPv6. Each runs in namespaces of its own.
#   tests/vm/run.sh tests/vm/all.sh
# IPVS_TEST_BIN names the prebuilt `ipvs_kernel` test binary (scripts/test.sh passes it); without
# it the newest one under the target directory is used. Build it first:
#   cargo test -p nodenet --test ipvs_kernel --no-run
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
failed=()

ipvs_kernel_tests() {
	local bin=${IPVS_TEST_BIN:-}
	if [ -z "$bin" ]; then
		bin=$(ls -t "${CARGO_TARGET_DIR:-$repo/target}"/debug/deps/ipvs_kernel-* 2>/dev/null | grep -v '\.d$' | head -n 1)
	fi
	if [ -z "$bin" ] || [ ! -x "$bin" ]; then
		echo "FAIL ipvs kernel tests: no ipvs_kernel test binary (cargo test -p nodenet --test ipvs_kernel --no-run)"
		return 1
	fi
	# The guest's kernel has IPVS: run the tests this machine's kernel must ignore.
	"$bin" --include-ignored --test-threads=1
}

run() {
	local name=$1; shift
	echo "=== $name"
	local start=$SECONDS
	"$@" || failed+=("$name")
	echo "=== $name took $((SECONDS - start)) s"
}

# run.sh without VM_APISERVER_PORT (as scripts/test.sh runs this) gives the guest no network device.
nics=$(for l in /sys/class/net/*; do [ -e "$l/device" ] && basename "$l"; done)
if [ -z "$nics" ]; then echo "PASS the guest has no network device"; else echo "FAIL the guest has network devices: $nics"; failed+=(no-network); fi

run seed-scenario "$here/seed-scenario.sh"
run ipvs-kernel ipvs_kernel_tests
run e2e-scenario "$here/e2e-scenario.sh"
run e2e-ipv6 "$here/e2e-ipv6.sh"

if ((${#failed[@]})); then
	echo "failed: ${failed[*]}"
	exit 1
fi
