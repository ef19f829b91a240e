#!/usr/bin/env bash
# Runs a script (or any command) as root inside a throwaway QEMU VM booting Debian's own kernel, and
# exits with its status. The guest sees this machine's root filesystem read-only under a tmpfs
# overlay (every write vanishes at poweroff), in the caller's working directory.
#
#   tests/vm/run.sh [--timeout SECS] <script|command> [args...]
#
# Environment:
#   VM_TIMEOUT  seconds for boot + run before QEMU is killed (default 900; --timeout wins)
#   VM_ENV      names of more variables to pass into the guest, e.g. VM_ENV="SERVICE_MANIFEST"
#               (always passed when set: CARGO_TARGET_DIR BIN_DIR RUST_LOG RUST_BACKTRACE)
#   VM_MEM      guest memory in MiB (default 1024)   VM_CPUS  guest vCPUs (default 2)
#   VM_CACHE    kernel/initramfs cache (default <repo>/.cache/vm, gitignored)
#   VM_KEEP=1   keep the job directory (console log, dmesg) after the run
#   VM_ACCEL    QEMU accelerator (default tcg; kvm hangs or aborts on the project's machine)
#   VM_APISERVER_PORT=PORT  gives the guest one NIC, eth0 10.0.2.15/24, whose only way out is
#               10.0.2.100:6443, forwarded to 127.0.0.1:PORT on this machine (a kube-apiserver of
#               tests/k8s/up.sh); QEMU user networking with restrict=on, so nothing else of the host
#               or beyond is reachable. Unset (the default): no network device at all.
#
# Inside the guest, $VM_JOB is a directory shared writable with the host at the same path: put
# results there (it is removed after the run unless VM_KEEP=1).
# Exit status: the script's; 124 when the timeout hit; 125 when the VM could not boot or set up.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VM_CACHE:-$repo/.cache/vm}
timeout=${VM_TIMEOUT:-900}
mem=${VM_MEM:-1024}
cpus=${VM_CPUS:-2}

die() {
	echo "vm: $*" >&2
	exit 125
}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit "$1"
}

while (($#)); do
	case $1 in
	--timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
	--timeout=*) timeout=${1#*=}; shift ;;
	-h | --help) usage 0 ;;
	--) shift; break ;;
	*) break ;;
	esac
done
(($#)) || usage 2
[[ $timeout =~ ^[0-9]+$ ]] || die "timeout must be whole seconds, got '$timeout'"
[ "$(id -u)" = 0 ] || die "run as root (the 9p export must read every file of the host's root filesystem)"
apiserver_port=${VM_APISERVER_PORT:-}
if [ -n "$apiserver_port" ]; then
	[[ $apiserver_port =~ ^[0-9]+$ ]] && ((apiserver_port > 0 && apiserver_port < 65536)) ||
		die "VM_APISERVER_PORT must be a TCP port, got '$apiserver_port'"
	# QEMU splits guestfwd's command on spaces and its option string on commas.
	[[ $here != *[\ ,]* ]] || die "the guest forward needs a path without spaces or commas: $here"
fi

# Debian packages the harness itself needs; installed on first use.
ensure_deps() {
	local missing=() p
	local wanted=(qemu-system-x86 busybox-static kmod cpio gzip)
	[ -z "$apiserver_port" ] || wanted+=(socat)
	for p in "${wanted[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	echo "vm: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
		die "cannot install ${missing[*]}"
}

# The kernel package linux-image-amd64 currently depends on, e.g. linux-image-6.1.0-56-amd64.
kernel_package() {
	apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Downloads and unpacks the kernel package into $cache/kernel-<version> with a modules.dep.
ensure_kernel() {
	local pkg
	pkg=$(kernel_package)
	if [ -z "$pkg" ]; then
		apt-get update >&2 || true
		pkg=$(kernel_package)
	fi
	[ -n "$pkg" ] || die "apt-cache names no kernel for linux-image-amd64 (is a Debian amd64 apt source configured?)"
	kver=${pkg#linux-image-}
	kdir=$cache/kernel-$kver
	[ -f "$kdir/.complete" ] && return 0
	echo "vm: fetching $pkg" >&2
	rm -rf "$cache/debs" "$kdir"
	mkdir -p "$cache/debs"
	(cd "$cache/debs" && apt-get download -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
	dpkg-deb -x "$cache"/debs/"$pkg"_*.deb "$kdir" || die "cannot unpack $pkg"
	# The package ships no modules.dep.
	depmod -b "$kdir" "$kver" || die "depmod failed for $kver"
	[ -f "$kdir/boot/vmlinuz-$kver" ] || die "$pkg has no /boot/vmlinuz-$kver"
	rm -rf "$cache/debs"
	touch "$kdir/.complete"
	# Drop other versions: one kernel is what the tests run on.
	find "$cache" -maxdepth 1 \( -name 'kernel-*' -o -name 'initrd-*' \) ! -name "kernel-$kver" ! -name "initrd-$kver-*" -exec rm -rf {} +
}

# Module trees the guest may load (the rest of the kernel's modules stay out to keep boot fast).
module_trees=(net drivers/net drivers/virtio drivers/char/hw_random fs/9p fs/netfs fs/fscache fs/overlayfs lib crypto arch/x86/crypto)
module_prune=(net/wireless net/mac80211 net/bluetooth net/ceph net/sunrpc net/nfc net/can net/ieee802154
	drivers/net/wireless drivers/net/ethernet drivers/net/usb drivers/net/can drivers/net/ieee802154
	drivers/net/wwan drivers/net/hamradio drivers/net/arcnet drivers/net/fddi drivers/net/phy
	drivers/net/pcs drivers/net/mdio drivers/net/dsa drivers/net/ppp drivers/net/slip)

# Builds $cache/initrd-<version>-<hash of its inputs>.gz: busybox-static, /init, the module trees.
ensure_initrd() {
	local key stage t
	key=$( { cat "$here/init" "$here/modules.list"; echo "${module_trees[*]}" "${module_prune[*]}"; sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
	initrd=$cache/initrd-$kver-$key.gz
	[ -f "$initrd" ] && return 0
	echo "vm: building $initrd" >&2
	[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] ||
		die "busybox-static is not installed (a dynamically linked busybox cannot run in the initramfs)"
	stage=$(mktemp -d "$cache/stage.XXXXXX")
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,lib/modules/"$kver"/kernel}
	cp /bin/busybox "$stage/bin/busybox"
	install -m 0755 "$here/init" "$stage/init"
	cp "$here/modules.list" "$stage/etc/vm-modules"
	for t in "${module_trees[@]}"; do
		mkdir -p "$stage/lib/modules/$kver/kernel/$(dirname "$t")"
		cp -a "$kdir/lib/modules/$kver/kernel/$t" "$stage/lib/modules/$kver/kernel/$t"
	done
	for t in "${module_prune[@]}"; do rm -rf "$stage/lib/modules/$kver/kernel/$t"; done
	cp "$kdir/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$kver/"
	depmod -b "$stage" "$kver" || die "depmod failed on the initramfs"
	(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$initrd.tmp" || die "cannot pack the initramfs"
	mv "$initrd.tmp" "$initrd"
	rm -rf "$stage"
	find "$cache" -maxdepth 1 -name "initrd-$kver-*" ! -name "$(basename "$initrd")" -delete
}

ensure_deps
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
ensure_kernel
ensure_initrd
flock -u 9
exec 9>&-

# The job directory: the guest mounts it writable at the same path.
job=$(mktemp -d /tmp/vm-job.XXXXXX)
qemu_pid=
cleanup() {
	[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
	if [ "${VM_KEEP:-}" = 1 ]; then echo "vm: job directory kept: $job" >&2; else rm -rf "$job"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cmd=("$@")
# A path (relative to the caller) runs as that file; anything else is a command on the guest's PATH.
if [ -e "${cmd[0]}" ]; then cmd[0]=$(realpath "${cmd[0]}"); fi
{
	echo '#!/bin/bash'
	echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8'
	printf 'export VM_JOB=%q\n' "$job"
	for name in CARGO_TARGET_DIR BIN_DIR RUST_LOG RUST_BACKTRACE ${VM_ENV:-}; do
		[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "VM_ENV: '$name' is not a variable name"
		if [ -n "${!name+set}" ]; then printf 'export %s=%q\n' "$name" "${!name}"; fi
	done
	printf 'cd %q || exit 125\n' "$PWD"
	if [ -f "${cmd[0]}" ] && [ ! -x "${cmd[0]}" ]; then printf 'exec /bin/bash'; else printf 'exec'; fi
	printf ' %q' "${cmd[@]}"
	echo
} >"$job/job.sh"
chmod 0755 "$job/job.sh"
echo "$job" >"$job/path"

# No NIC (-nodefaults) unless asked for: then one, whose only way out is the forward to the API
# server (restrict=on: no route to the host or anything beyond; guestfwd runs the forwarder once
# per connection).
net=()
if [ -n "$apiserver_port" ]; then
	net=(-netdev "user,id=n0,restrict=on,ipv6=off,guestfwd=tcp:10.0.2.100:6443-cmd:$here/apiserver-forward.sh $apiserver_port"
		-device virtio-net-pci,netdev=n0)
fi

start=$(date +%s)
# virtio-rng: the guest's random pool is ready at boot, not 40 s later. ttyS0 carries the kernel
# console into a file; ttyS1 carries the job's output to our stdout.
timeout -k 10 "$timeout" qemu-system-x86_64 \
	-nodefaults -machine q35 -accel "${VM_ACCEL:-tcg}" -m "$mem" -smp "$cpus" -display none -no-reboot \
	-kernel "$kdir/boot/vmlinuz-$kver" -initrd "$initrd" \
	-append "console=ttyS0 quiet panic=-1" \
	-chardev file,id=console,path="$job/console.log" -device isa-serial,chardev=console \
	-chardev stdio,id=out,signal=off -device isa-serial,chardev=out \
	-device virtio-rng-pci "${net[@]}" \
	-virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap \
	-virtfs local,path="$job",mount_tag=job,security_model=passthrough </dev/null &
qemu_pid=$!
set +e
wait "$qemu_pid"
qemu_rc=$?
set -e
qemu_pid=
elapsed=$(($(date +%s) - start))

if [ ! -f "$job/rc" ]; then
	echo "vm: the VM did not finish the job (qemu exit $qemu_rc after ${elapsed}s$([ "$qemu_rc" = 124 ] && echo ", timeout ${timeout}s")); kernel console:" >&2
	tail -n 60 "$job/console.log" >&2 2>/dev/null || true
	[ "$qemu_rc" = 124 ] && exit 124
	exit 125
fi
rc=$(cat "$job/rc")
if [ "$rc" != 0 ]; then
	echo "vm: job exited $rc after ${elapsed}s; kernel log (tail):" >&2
	tail -n 40 "$job/dmesg" >&2 || true
else
	echo "vm: job exited 0 after ${elapsed}s" >&2
fi
exit "$rc"
