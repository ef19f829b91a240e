#!/usr/bin/env bash
# Installs everything the project needs on a Debian 12 machine (run as root). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # build
  build-essential pkg-config protobuf-compiler
  # kernel tools the tests observe with (never used by the binaries for per-entry work)
  iproute2 ipset iptables ipvsadm conntrack kmod procps psmisc curl python3 util-linux strace tcpdump
  # peak memory of one plugin run (GNU time)
  time
  # the reference plugins, baseline for behaviour and benchmarks
  containernetworking-plugins
  # real CNI clients
  containerd runc golang-go dpkg-dev
  # the throwaway VM with a real kernel
  qemu-system-x86 busybox-static cpio gzip
  # the real control plane (tests/k8s: its PKI; Go >= 1.26 builds it) and the VM's forward to it
  openssl socat
  # the kube-proxy differential test's tool reads the corpus (tests/vm/kube-proxy-diff/kpdiff.py)
  python3-yaml
  # kube-proxy --proxy-mode=nftables, the third column of bench/kube-proxy (it execs nft)
  nftables
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain >= 1.85 (rustup) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
