#!/usr/bin/env bash
# Builds the Kubernetes control-plane peers the tests run against — kube-apiserver,
# kube-controller-manager, kube-proxy, kubectl (one release) and etcd (the version that release
# requires) — from the Go module proxy, and caches them outside the repository, keyed by version.
# A warm cache is a no-op. Prints the binary directory on stdout.
#
#   tests/k8s/build.sh            # builds (or finds) $K8S_CACHE/<version>/bin
#
# Environment: K8S_VERSION (default below), K8S_CACHE (default /var/cache/nodenet-k8s), GO (the
# go binary; default the first Go >= 1.26 of PATH and /usr/local/go/bin).
set -euo pipefail

version=${K8S_VERSION:-v1.37.2}
cache=${K8S_CACHE:-/var/cache/nodenet-k8s}
dir=$cache/$version
bin=$dir/bin
tools=(kube-apiserver kube-controller-manager kube-proxy kubectl etcd)
# Bumped whenever the way the binaries are built changes, so a cache built the old way is rebuilt.
# 2: every module pinned at the release's own go.mod (1 let `go get` upgrade etcd, grpc, x/*).
recipe=2

complete() {
	local t
	[ "$(cat "$dir/.complete" 2>/dev/null)" = "$recipe" ] || return 1
	for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if complete; then
	echo "$bin"
	exit 0
fi

# Go >= 1.26 (k8s.io/kubernetes' go directive; GOTOOLCHAIN=local may forbid fetching a newer one).
go=
for candidate in ${GO:-} $(command -v go 2>/dev/null) /usr/local/go/bin/go; do
	v=$("$candidate" env GOVERSION 2>/dev/null) || continue
	v=${v#go}
	if [ "${v%%.*}" -gt 1 ] || { [ "${v%%.*}" = 1 ] && [ "$(cut -d. -f2 <<<"$v")" -ge 26 ]; }; then
		go=$candidate
		break
	fi
done
[ -n "$go" ] || { echo "k8s build: no Go >= 1.26 found (PATH, /usr/local/go/bin, or GO=...)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if complete; then
	echo "$bin"
	exit 0
fi

proxy=${GOPROXY_URL:-https://proxy.golang.org}
echo "k8s build: building Kubernetes $version peers into $bin with $go (first time only; several minutes)" >&2
started=$SECONDS
# Built beside the cache entry and moved into place at the end: a failed or interrupted build never
# leaves a half-filled bin directory, and readers of an older build keep theirs until the swap.
stage=$cache/.build-$version
rm -rf "$stage"
src=$stage/src
mkdir -p "$src" "$stage/bin"
staging=v0.${version#v1.}
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging; a
# consumer replaces each with its published version instead.
mod=$(curl -fsS "$proxy/k8s.io/kubernetes/@v/$version.mod") ||
	{ echo "k8s build: cannot read k8s.io/kubernetes@$version's go.mod from the Go module proxy" >&2; exit 1; }
# The etcd the release was built and tested against (its go.mod requires the server module).
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' <<<"$mod")
[ -n "$etcd" ] || { echo "k8s build: k8s.io/kubernetes@$version's go.mod names no go.etcd.io/etcd/server/v3" >&2; exit 1; }
{
	echo "module nodenet.local/k8s-peers"
	echo
	echo "go 1.26.0"
	echo
	awk -v v="$staging" '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { printf "replace %s => %s %s\n", $1, $1, v }' <<<"$mod"
} >"$src/go.mod"
cd "$src"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
# Packages named at their exact versions: `go get` adds what they need at the versions their
# go.mod files require and upgrades nothing else.
"$go" get "${pkgs[@]/%/@$version}" "go.etcd.io/etcd/server/v3@$etcd" >&2
for m in k8s.io/kubernetes go.etcd.io/etcd/server/v3 google.golang.org/grpc; do
	want=$(awk -v m="$m" '$1 == m { print $2; exit }' <<<"$mod")
	have=$("$go" list -m -f '{{.Version}}' "$m")
	[ "$m" = k8s.io/kubernetes ] && want=$version
	[ "$want" = "$have" ] || { echo "k8s build: $m resolved to $have, but $version requires $want" >&2; exit 1; }
done
commit=$(curl -fsS "$proxy/k8s.io/kubernetes/@v/$version.info" | sed -n 's/.*"Origin".*"Hash":"\([0-9a-f]*\)".*/\1/p')
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$version")"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	[ -z "$commit" ] || ldflags+=" -X $pkg.gitCommit=$commit"
done
for pkg in "${pkgs[@]}"; do
	"$go" build -trimpath -ldflags "$ldflags" -o "$stage/bin/" "$pkg" >&2
done
"$go" build -trimpath -ldflags "-s -w" -o "$stage/bin/etcd" go.etcd.io/etcd/server/v3 >&2
"$stage/bin/kube-apiserver" --version >&2
"$stage/bin/etcd" --version >&2
echo "$recipe" >"$stage/.complete"
rm -rf "$dir.old"
[ ! -e "$dir" ] || mv "$dir" "$dir.old"
mv "$stage" "$dir"
rm -rf "$dir.old"
# One release is what the tests run on: drop other cached versions.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$version" -exec rm -rf {} +
echo "k8s build: done in $((SECONDS - started)) s" >&2
echo "$bin"
