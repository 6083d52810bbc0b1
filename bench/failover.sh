#!/usr/bin/env bash
# Failover under traffic: what a silently dead link costs, with BFD and without, in one run.
#
#   bench/failover.sh            (root; builds release; RUNS=3 per mode)
#
# One node running Petrel, two routers (BIRD and FRR) announcing the same 198.18.0.0/16
# (ECMP in the node's FIB; both answer on 198.18.0.1), a "pod" namespace behind the node
# pinging 198.18.0.1 every 10 ms. The router carrying the flow then drops every packet on
# its link (iptables inside its namespace: the link stays up, TCP never closes). Reported:
# the packets lost, as traffic time (lost x the measured interval between pings, which is
# longer than 10 ms on a busy machine), and the time until the kernel's route no longer
# uses that next hop. Mode `bfd`: BFD 300 ms x 3 on both sessions; mode `hold`: BGP alone, hold 9 s.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-3}
[ "$(id -u)" = 0 ] || { echo "failover.sh: run as root" >&2; exit 1; }
cargo build --release -q -p petrel --manifest-path "$ROOT/Cargo.toml" >&2
PETREL="$ROOT/target/release/petrel"
ID=fo$$
W=$(mktemp -d /tmp/petrel-failover.XXXX)
chmod 777 "$W"
N=$ID-n; RB=$ID-rb; RF=$ID-rf; POD=$ID-pod

cleanup() {
  for ns in $N $RB $RF $POD; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT

run_mode() {
  local mode=$1 run=$2
  cleanup 2>/dev/null || true; mkdir -p "$W"; chmod 777 "$W"
  for ns in $N $RB $RF $POD; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip link add "${ID}b0" netns "$RB" type veth peer name "${ID}b1" netns "$N"
  ip link add "${ID}f0" netns "$RF" type veth peer name "${ID}f1" netns "$N"
  ip link add "${ID}p0" netns "$POD" type veth peer name "${ID}p1" netns "$N"
  ip -n "$RB" addr add 198.51.100.1/24 dev "${ID}b0"; ip -n "$N" addr add 198.51.100.2/24 dev "${ID}b1"
  ip -n "$RF" addr add 203.0.113.1/24 dev "${ID}f0"; ip -n "$N" addr add 203.0.113.2/24 dev "${ID}f1"
  ip -n "$RB" addr add 198.18.0.1/32 dev lo; ip -n "$RF" addr add 198.18.0.1/32 dev lo
  ip -n "$POD" addr add 10.244.2.10/32 dev "${ID}p0"
  for l in "$RB ${ID}b0" "$N ${ID}b1" "$RF ${ID}f0" "$N ${ID}f1" "$POD ${ID}p0" "$N ${ID}p1"; do
    set -- $l; ip -n "$1" link set "$2" up
  done
  ip -n "$POD" route add 169.254.1.1 dev "${ID}p0" scope link
  ip -n "$POD" route add default via 169.254.1.1 dev "${ID}p0"
  ip -n "$POD" neigh replace 169.254.1.1 lladdr "$(ip -n "$N" -j link show "${ID}p1" | sed 's/.*"address":"\([^"]*\)".*/\1/')" dev "${ID}p0" nud permanent
  ip -n "$N" route add 10.244.2.10/32 dev "${ID}p1"
  ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$RB" sysctl -qw net.ipv4.ip_local_port_range="49152 65535"

  local bird_bfd="" frr_bfd="" petrel_bfd=""
  if [ "$mode" = bfd ]; then
    bird_bfd='bfd on;'
    frr_bfd=' neighbor 203.0.113.2 bfd'
    petrel_bfd=', bfd: { min_rx: 300, min_tx: 300, multiplier: 3 }'
  fi
  cat > "$W/bird.conf" <<EOC
router id 198.51.100.1;
protocol device {}
protocol direct { ipv4; interface "lo"; }
protocol kernel { ipv4 { export all; }; }
protocol bfd { interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }
protocol bgp n { local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002; hold time 9; connect delay time 1; $bird_bfd
  ipv4 { import all; export where net = 198.18.0.0/16; }; }
protocol static { ipv4; route 198.18.0.0/16 blackhole; }
EOC
  ip netns exec "$RB" bird -c "$W/bird.conf" -s "$W/bird.ctl" -P "$W/bird.pid"
  cat > "$W/frr.conf" <<EOC
frr defaults traditional
hostname rf
ip route 198.18.0.0/16 blackhole
router bgp 65003
 bgp router-id 203.0.113.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp graceful-restart-disable
 timers bgp 3 9
 neighbor 203.0.113.2 remote-as 65002
 neighbor 203.0.113.2 timers connect 1
$frr_bfd
 address-family ipv4 unicast
  network 198.18.0.0/16
 exit-address-family
!
EOC
  printf 'bfd\n!\n' > "$W/bfdd.conf"
  local c="-d -u root -g root -z $W/zserv.api --vty_socket $W"
  ip netns exec "$RF" /usr/lib/frr/zebra $c -i "$W/zebra.pid" -f /dev/null 2>/dev/null
  for _ in $(seq 50); do [ -S "$W/zserv.api" ] && break; sleep 0.1; done
  ip netns exec "$RF" /usr/lib/frr/bgpd $c -i "$W/bgpd.pid" -f "$W/frr.conf" -P 0 2>/dev/null
  ip netns exec "$RF" /usr/lib/frr/bfdd $c -i "$W/bfdd.pid" -f "$W/bfdd.conf" 2>/dev/null
  cat > "$W/petrel.yaml" <<EOC
node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }
peers:
  - { name: bird, address: 198.51.100.1, asn: 65001, hold_time: 9, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] }$petrel_bfd }
  - { name: frr, address: 203.0.113.1, asn: 65003, hold_time: 9, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] }$petrel_bfd }
bgp: { graceful_restart: { enabled: false } }
EOC
  ip netns exec "$N" "$PETREL" run --config "$W/petrel.yaml" --socket "$W/petrel.sock" --log warn > "$W/petrel.log" 2>&1 &
  disown
  # ECMP over both routers, and BFD up where asked.
  local ok=""
  for _ in $(seq 300); do
    local gws; gws=$(ip -n "$N" route show 198.18.0.0/16 | grep -c "via" || true)
    if [ "$gws" -ge 2 ]; then
      if [ "$mode" != bfd ] || [ "$("$PETREL" status --json --socket "$W/petrel.sock" | grep -Eo '"state": ?"Up"' | wc -l)" -ge 2 ]; then ok=1; break; fi
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "failover.sh: no ECMP route (mode $mode)" >&2; ip -n "$N" route; tail "$W/petrel.log" >&2; return 1; }
  # The router the flow takes.
  local via; via=$(ip -n "$N" route get 198.18.0.1 from 10.244.2.10 iif "${ID}p1" | grep -o 'via [0-9.]*' | cut -d' ' -f2)
  local rns=$RB rif=${ID}b0; [ "$via" = 203.0.113.1 ] && { rns=$RF; rif=${ID}f0; }
  # 20 s of pings every 10 ms; the cut after 3 s.
  ip netns exec "$POD" ping -n -i 0.01 -w 20 -W 1 198.18.0.1 > "$W/ping.txt" 2>&1 &
  local pp=$!
  sleep 3
  ip netns exec "$rns" iptables -A INPUT -i "$rif" -j DROP
  ip netns exec "$rns" iptables -A OUTPUT -o "$rif" -j DROP
  local t0; t0=$(date +%s.%N) t1=""
  for _ in $(seq 2000); do
    if ! ip -n "$N" route show 198.18.0.0/16 | grep -q "via $via"; then t1=$(date +%s.%N); break; fi
    sleep 0.01
  done
  wait "$pp" || true
  local sent recv
  sent=$(grep -o '[0-9]* packets transmitted' "$W/ping.txt" | cut -d' ' -f1)
  recv=$(grep -o '[0-9]* received' "$W/ping.txt" | cut -d' ' -f1)
  local lost=$((sent - recv))
  local route_s=none; [ -n "$t1" ] && route_s=$(echo "$t1 - $t0" | bc -l | xargs printf '%.3f')
  printf 'mode=%s run=%s via=%s sent=%s lost=%s lost_ms=%s route_gone_s=%s\n' \
    "$mode" "$run" "$via" "$sent" "$lost" "$((lost * 20000 / sent))" "$route_s"
}

for run in $(seq "$RUNS"); do
  for mode in bfd hold; do
    run_mode "$mode" "$run"
  done
done
