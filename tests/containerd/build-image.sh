#!/usr/bin/env bash
# Builds an OCI image-layout tar of Debian's busybox-static, for `ctr images import` without a registry.
#   usage: build-image.sh OUT.tar IMAGE_NAME
# One uncompressed layer (/bin/busybox plus a symlink per applet); the manifest carries the
# `io.containerd.image.name` annotation so ctr names the image IMAGE_NAME on import. Deterministic:
# the same busybox gives the same digests.
set -euo pipefail
out=$1 name=$2
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-image: $busybox missing (Debian package busybox-static)" >&2; exit 1; }
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs layout=$work/layout
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root} "$layout/blobs/sha256"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
chmod 1777 "$root/tmp"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .

# Stores a file as a blob; prints "sha256:<hex> <size>".
blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

read -r layer_digest layer_size < <(blob "$work/layer.tar")
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sleep","86400"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$arch" "$layer_digest" >"$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$arch" "$name" "${name##*:}" >"$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out.tmp" .
mv "$out.tmp" "$out"
