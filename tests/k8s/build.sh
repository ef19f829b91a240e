#!/usr/bin/env bash
# Builds the Kubernetes control-plane peers the tests run against — kube-apiserver,
# kube-controller-manager, kube-proxy, kubectl (one release) and etcd (the version that release
# requires) — from the Go module proxy, and caches them outside the repository, keyed by version.
# A warm cache is a no-op. Prints the binary directory on stdout.
#
#   tests/k8s/build.sh            # builds (or finds) $K8S_CACHE/<version>/bin
#
# Environment: K8S_VERSION (default below), K8S_CACHE (default /var/cache/nodenet-k8s).
set -euo pipefail

version=${K8S_VERSION:-v1.37.2}
cache=${K8S_CACHE:-/var/cache/nodenet-k8s}
dir=$cache/$version
bin=$dir/bin
tools=(kube-apiserver kube-controller-manager kube-proxy kubectl etcd)

complete() {
	local t
	[ -f "$dir/.complete" ] || return 1
	for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if complete; then
	echo "$bin"
	exit 0
fi

command -v go >/dev/null || { echo "k8s build: go not found (Go >= 1.26 is needed)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if complete; then
	echo "$bin"
	exit 0
fi

echo "k8s build: building Kubernetes $version peers into $bin (first time only; several minutes)" >&2
rm -rf "$dir"
src=$dir/src
mkdir -p "$src" "$bin"
staging=v0.${version#v1.}
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging; a
# consumer replaces each with its published version instead.
mod=$(curl -fsS "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/$version.mod") ||
	{ echo "k8s build: cannot read k8s.io/kubernetes@$version's go.mod from the Go module proxy" >&2; exit 1; }
{
	echo "module nodenet.local/k8s-peers"
	echo
	echo "go 1.26.0"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	awk -v v="$staging" '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { printf "replace %s => %s %s\n", $1, $1, v }' <<<"$mod"
} >"$src/go.mod"
cd "$src"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3)
go get "${pkgs[@]}" >&2
commit=$(curl -fsS "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/$version.info" | sed -n 's/.*"Origin".*"Hash":"\([0-9a-f]*\)".*/\1/p')
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$version")"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	[ -z "$commit" ] || ldflags+=" -X $pkg.gitCommit=$commit"
done
for pkg in "${pkgs[@]:0:4}"; do
	go build -trimpath -ldflags "$ldflags" -o "$bin/" "$pkg" >&2
done
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2
"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version >&2
touch "$dir/.complete"
# One release is what the tests run on: drop other cached versions.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$version" -exec rm -rf {} +
echo "$bin"
