#!/usr/bin/env bash
# Builds cnitool (libcni's own CLI) offline from Debian's source package golang-github-appc-cni,
# with Debian's golang-go in GOPATH mode (no module download).
#   usage: build-cnitool.sh OUT
# The deb-src index is fetched into a private apt state directory derived from this machine's own
# `deb` sources: the system's apt configuration and package lists are left exactly as they were.
set -euo pipefail
out=$1
for tool in apt-get dpkg-source go; do
  command -v "$tool" >/dev/null || { echo "build-cnitool: $tool missing (Debian packages apt, dpkg-dev, golang-go)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt_dir=$work/apt
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial"
# deb-src twins of every configured `deb` source (one-line and deb822 formats).
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && sed -n 's/^deb \(.*\)$/deb-src \1/p' "$f"
done >"$apt_dir/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed 's/^Types:.*$/Types: deb-src/' "$f" >"$apt_dir/sources.list.d/$(basename "$f")"
done
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only golang-github-appc-cni)

gopath=$work/gopath
src=$gopath/src/github.com/containernetworking/cni
mkdir -p "$(dirname "$src")"
# apt has already checked the files against the signed Sources index; the .dsc signer key is not on the machine.
dpkg-source --no-check -x "$work"/golang-github-appc-cni_*.dsc "$src" >/dev/null
(cd "$src" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
  GOCACHE="$work/gocache" CGO_ENABLED=0 go build -o "$work/cnitool" ./cnitool)

mkdir -p "$(dirname "$out")"
mv "$work/cnitool" "$out"
