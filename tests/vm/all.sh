#!/usr/bin/env bash
# Every VM test, in one boot (boots dominate the run time): the seed article's commands, then the
# scenario end to end with the project's binaries. Each runs in namespaces of its own.
#   tests/vm/run.sh tests/vm/all.sh
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
failed=()
for t in seed-scenario.sh e2e-scenario.sh; do
	echo "=== $t"
	start=$SECONDS
	"$here/$t" || failed+=("$t")
	echo "=== $t took $((SECONDS - start)) s"
done
if ((${#failed[@]})); then
	echo "failed: ${failed[*]}"
	exit 1
fi
