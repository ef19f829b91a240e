#!/usr/bin/env bash
# Sets everything up and runs every test tier; prints one closing line "N passed, N failed".
#   format, clippy, unit tests, the namespace tests on this kernel (cni-bridge, containerd, cnitool),
#   the tests against a real control plane (tests/k8s; one of them boots the VM with a forward to
#   it), and the VM tests on Debian's own kernel (IPVS, dummy, the scenario end to end).
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (network namespaces, containerd, QEMU)" >&2; exit 1; }

./scripts/setup.sh || { echo "test.sh: setup failed" >&2; exit 1; }

log_dir=$(mktemp -d /tmp/cni-test.XXXXXX)
passed=0 failed=0 failures=()

# Runs one tier, echoing its output, and adds its counted tests (cargo's "test result" lines, or
# PASS/FAIL lines from the shell tiers) to the totals; a tier that fails without counting counts 1.
tier() {
  local name=$1; shift
  echo "=== $name: $*"
  local out="$log_dir/$name.log" rc p f
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  read -r p f < <(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
                     /^PASS/ { p++ } /^FAIL/ { f++ } END { print p + 0, f + 0 }' "$out")
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
  if [ "$rc" = 0 ] && [ "$p" = 0 ]; then p=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  [ "$rc" = 0 ] || failures+=("$name")
}

tier fmt cargo fmt --all -- --check
tier clippy cargo clippy --workspace --all-targets -- -D warnings
tier build cargo build --workspace --all-targets
# The real control plane's binaries for the cargo tier's k8s tests (cached; the first build takes
# about 15 min). K8S_BIN tells the harness where they are.
tier k8s-build tests/k8s/build.sh
K8S_BIN=$(tests/k8s/build.sh 2>/dev/null) && export K8S_BIN
tier cargo-tests cargo test --workspace --no-fail-fast
# The VM runs prebuilt test binaries (cargo in the guest would rebuild over 9p).
IPVS_TEST_BIN=$(cargo test -p nodenet --test ipvs_kernel --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
export IPVS_TEST_BIN VM_ENV="IPVS_TEST_BIN"
tier vm tests/vm/run.sh tests/vm/all.sh

echo
if ((${#failures[@]})); then echo "failed tiers: ${failures[*]} (logs in $log_dir)"; fi
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ ${#failures[@]} = 0 ]
