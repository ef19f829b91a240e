# shellcheck shell=bash
# Helpers shared by up.sh, down.sh and apiserver.sh: the control plane's state file, starting and
# stopping its processes by the PIDs recorded there (never by name), and readiness waits.
#
# The state lives in DIR/env (shell-sourceable, written atomically): ports, PIDs, the binary dir.

k8s_die() {
	echo "k8s: $*" >&2
	exit 1
}

# k8s_load DIR: sources DIR/env into the caller's shell; fails when DIR holds no control plane.
k8s_load() {
	[ -f "$1/env" ] || k8s_die "$1 holds no control plane (no $1/env; was up.sh run on it?)"
	# shellcheck disable=SC1091
	. "$1/env"
}

# k8s_set DIR NAME VALUE: sets one variable in DIR/env (replacing its line), atomically.
k8s_set() {
	local dir=$1 name=$2 value=$3
	touch "$dir/env"
	{
		grep -v "^$name=" "$dir/env" || true
		printf '%s=%q\n' "$name" "$value"
	} >"$dir/env.tmp"
	mv "$dir/env.tmp" "$dir/env"
}

# k8s_owned PID DIR: true when PID is alive and one of ours, i.e. its command line names DIR (every
# process up.sh starts has DIR in its flags), so a recycled PID is never signalled.
k8s_owned() {
	local pid=$1 dir=$2
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/"
}

# k8s_running PID: true while PID, a child this shell just started, has not exited (it stays a
# zombie until reaped, so its PID is not reused meanwhile). Used while waiting for a start, when
# the child may not have exec'd its binary yet (its command line is still this shell's).
k8s_running() {
	local state
	[ -n "$1" ] && state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ] && [ "$state" != X ]
}

# k8s_stop NAME PID DIR: TERM, up to 15 s for it to exit, then KILL. Only when k8s_owned.
k8s_stop() {
	local name=$1 pid=$2 dir=$3 i
	k8s_owned "$pid" "$dir" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 150; i++)); do
		k8s_owned "$pid" "$dir" || return 0
		sleep 0.1
	done
	echo "k8s: $name ($pid) ignored TERM for 15 s; killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		k8s_owned "$pid" "$dir" || return 0
		sleep 0.1
	done
	echo "k8s: $name ($pid) survived KILL" >&2
	return 1
}

# k8s_tail_log NAME DIR: the last lines of DIR/NAME.log (NAME: the binary) on stderr.
k8s_tail_log() {
	[ -f "$2/$1.log" ] || return 0
	echo "--- $2/$1.log (tail)" >&2
	tail -n 25 "$2/$1.log" >&2
}

# k8s_wait_https NAME PID DIR URL: waits until URL answers "ok" with the admin's credentials, while
# PID lives; bounded by K8S_START_TIMEOUT seconds (default 180: a loaded 2-core machine is slow).
k8s_wait_https() {
	local name=$1 pid=$2 dir=$3 url=$4 end body
	end=$((SECONDS + ${K8S_START_TIMEOUT:-180}))
	while ((SECONDS < end)); do
		k8s_running "$pid" || { echo "k8s: $name exited during start" >&2; k8s_tail_log "$name" "$dir"; return 1; }
		body=$(curl -sS --max-time 5 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$url" 2>/dev/null) &&
			[ "$body" = ok ] && return 0
		sleep 0.1
	done
	echo "k8s: $name not ready at $url after ${K8S_START_TIMEOUT:-180} s (last answer: '${body:-}')" >&2
	k8s_tail_log "$name" "$dir"
	return 1
}

# k8s_start_apiserver DIR: starts kube-apiserver with DIR/apiserver.args (written once by up.sh,
# so a restart has exactly the first start's port and flags), records its PID, waits for /readyz.
k8s_start_apiserver() {
	local dir=$1 pid args=()
	k8s_load "$dir"
	if k8s_owned "${APISERVER_PID:-}" "$dir"; then k8s_die "kube-apiserver already runs (PID $APISERVER_PID)"; fi
	mapfile -t args <"$dir/apiserver.args"
	echo "--- start $(date -u +%FT%TZ)" >>"$dir/kube-apiserver.log"
	"$K8S_BIN/kube-apiserver" "${args[@]}" </dev/null >>"$dir/kube-apiserver.log" 2>&1 &
	pid=$!
	k8s_set "$dir" APISERVER_PID "$pid"
	k8s_wait_https kube-apiserver "$pid" "$dir" "https://127.0.0.1:$APISERVER_PORT/readyz"
}
