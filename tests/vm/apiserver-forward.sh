#!/bin/sh
# QEMU's guestfwd runs this once per guest connection to 10.0.2.100:6443 (run.sh with
# VM_APISERVER_PORT), with the connection as stdin and stdout, on the host: it bridges them to the
# API server on the host's loopback. Its path must hold no spaces (QEMU splits the command on them).
#
#   apiserver-forward.sh PORT
# stderr is the guest's connection too: socat's messages must not go there.
exec 2>/dev/null
case $1 in '' | *[!0-9]*) exit 1 ;; esac
exec socat STDIO "TCP:127.0.0.1:$1"
