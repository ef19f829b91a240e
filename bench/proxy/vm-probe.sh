#!/usr/bin/env bash
# Where svc-proxy spends its time on the VM's kernel: timestamps its log while it programs the
# scenario Service from a hand-written attachment record, then adds a second record.
#   tests/vm/run.sh bench/proxy/vm-probe.sh [BIN_DIR]
set -uo pipefail
bin=${1:-/work/targets/proxy/debug}
ns=probe$$
work=$(mktemp -d /tmp/probe.XXXXXX)
trap 'kill $pid 2>/dev/null; wait; ip netns del $ns; rm -rf $work' EXIT
ip netns add $ns
N() { ip netns exec $ns "$@"; }
N ip link set lo up
N ip link add pods0 type dummy && N ip addr add 10.0.0.1/24 dev pods0 && N ip link set pods0 up
t() { local s=$(date +%s%N); "$@" >/dev/null 2>&1; echo "$(( ($(date +%s%N) - s) / 1000000 )) ms: $*"; }
t N iptables -w -t nat -S POSTROUTING
t N iptables -w -t nat -C POSTROUTING -j NOPE
t N ipvsadm -Ln
t N true
mkdir -p $work/m $work/state/net
cp /work/main/conf/services/app-service.yaml $work/m/
rec() { printf '{"version":1,"network":"net","containerId":"%s","ifname":"eth0","phase":"ready","ips":["%s/24"],"labels":{"component":"app"}}' $1 $2 >$work/state/net/.tmp; mv $work/state/net/.tmp $work/state/net/$1.eth0.json; }
rec c1 10.0.0.11
start=$(date +%s%N)
ms() { echo $(( ($(date +%s%N) - start) / 1000000 )); }
N $bin/svc-proxy --attachments $work/state --resync-period ${RESYNC:-2s} $work/m 2>&1 | while IFS= read -r l; do echo "[$(ms) ms] $l"; done &
pid=$!
until N ipvsadm -Ln -t 10.100.100.100:8080 2>/dev/null | grep -q 10.0.0.11; do sleep 0.05; done
echo "[$(ms) ms] probe: first real server visible"
sleep 3
echo "[$(ms) ms] probe: adding record c2"
rec c2 10.0.0.21
until N ipvsadm -Ln -t 10.100.100.100:8080 2>/dev/null | grep -q 10.0.0.21; do sleep 0.05; done
echo "[$(ms) ms] probe: second real server visible"
sleep 5
N curl -s 127.0.0.1:10249/metrics | grep -v '^#'
