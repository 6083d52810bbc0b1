#!/usr/bin/env bash
# A route reflector under N iBGP clients: Petrel beside BIRD, in one run.
#
#   bench/scale-rr.sh [N ...]     (default: 100 1000; root; builds release)
#   SUTS="petrel bird" (default) which reflectors to run, in this order.
#   PETREL_WRAP="heaptrack -o /tmp/ht/petrel" runs Petrel's reflector under a profiler
#   (where its memory goes: `heaptrack_print /tmp/ht/petrel.zst`, PEAK MEMORY CONSUMERS);
#   the rss figures are then the wrapper's, not Petrel's.
#
# N BIRD processes, each originating one /24, share one LAN segment in a "clients"
# namespace (all N addresses on one veth) with the reflector in its own namespace. The
# reflector knows only the clients' range (Petrel `peer_ranges`, BIRD `neighbor range`),
# with route_reflector_client / `rr client`. Reported per reflector:
#   start_s  from the first client's start until the last client process is up
#   total_s  from the first client's start until every client holds its own prefix, the
#            other N-1 reflected and the reflector's own, seen with each client's birdc
#   after_s  total_s - start_s: the reflector's part once the clients are up
#   rss_mb   the reflector's resident memory then (VmRSS), and its peak (VmHWM)
#   b/route  (VmRSS at the end - VmRSS before the clients) / (N x (N-1)) reflected routes
#   settled  3 s later (both reflectors idle by then): VmRSS, its anonymous part (heap,
#            stacks) and its file-backed part (the binary's pages read so far), and b/route
# Clients share one namespace, so each announces a next hop that is on the LAN but not an
# address of that namespace (else the others would refuse it as their own).
# Neighbour entries are permanent on both sides: ~1000 dynamic ones would overflow the
# machine-wide ARP table (shared/RUNNING-PEERS.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "scale-rr.sh: run as root" >&2; exit 1; }
command -v bird >/dev/null || { echo "scale-rr.sh: needs bird (bird2)" >&2; exit 1; }
cargo build --release -q -p petrel --manifest-path "$ROOT/Cargo.toml" >&2
PETREL=${PETREL:-$ROOT/target/release/petrel}
SIZES=("$@"); [ ${#SIZES[@]} -eq 0 ] && SIZES=(100 1000)
SUTS=${SUTS:-petrel bird}
ID=srr$$
C=$ID-c; R=$ID-r
W=$(mktemp -d /tmp/petrel-scale-rr.XXXX)
ulimit -n "$(ulimit -Hn)"

cleanup() {
  for ns in $C $R; do
    # The daemons get TERM first and a moment to exit, so that a profiler wrapping the
    # reflector can write its data out; then whatever is left goes.
    for p in $(ip netns pids "$ns" 2>/dev/null); do
      case "$(cat "/proc/$p/comm" 2>/dev/null)" in petrel | bird) kill "$p" 2>/dev/null || true ;; esac
    done
    for _ in $(seq 100); do
      ip netns pids "$ns" 2>/dev/null | xargs -r -I{} cat /proc/{}/comm 2>/dev/null | grep -qxE 'petrel|bird' || break
      sleep 0.1
    done
    sleep 1
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 100); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
[ -n "${KEEP:-}" ] || trap 'cleanup; rm -rf "$W"' EXIT

addr() { echo "10.100.$(( $1 / 250 + 1 )).$(( $1 % 250 + 1 ))"; }
# The next hop each client announces: on the LAN (a /15) but no namespace's address, so
# that the other clients, which share one namespace, do not take it for their own.
nexthop() { echo "10.101.$(( $1 / 250 + 1 )).$(( $1 % 250 + 1 ))"; }
prefix() { echo "100.$(( 64 + $1 / 256 )).$(( $1 % 256 )).0/24"; }
rss_kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

run() {
  local sut=$1 n=$2
  cleanup; rm -rf "$W"; mkdir -p "$W/c"; chmod 777 "$W"
  ip netns add "$C"; ip netns add "$R"
  ip -n "$C" link set lo up; ip -n "$R" link set lo up
  ip link add "${ID}c" netns "$C" type veth peer name "${ID}r" netns "$R"
  ip -n "$R" addr add 10.100.0.1/15 dev "${ID}r"
  for i in $(seq 0 $((n - 1))); do echo "addr add $(addr "$i")/15 dev ${ID}c"; done | ip -n "$C" -batch -
  ip -n "$C" link set "${ID}c" up; ip -n "$R" link set "${ID}r" up
  local cmac rmac
  cmac=$(cat "/sys/class/net/${ID}c/address" 2>/dev/null || ip netns exec "$C" cat "/sys/class/net/${ID}c/address")
  rmac=$(ip netns exec "$R" cat "/sys/class/net/${ID}r/address")
  ip -n "$C" neigh replace 10.100.0.1 lladdr "$rmac" dev "${ID}c" nud permanent
  for i in $(seq 0 $((n - 1))); do echo "neigh replace $(addr "$i") lladdr $cmac dev ${ID}r nud permanent"; done | ip -n "$R" -batch -

  local pid
  case $sut in
    petrel)
      cat > "$W/rr.yaml" <<EOC
node: { asn: 65000, router_id: 10.100.0.1, pod_cidrs: [10.244.0.0/24] }
bgp: { cluster_id: 198.18.0.1, graceful_restart: { enabled: false } }
fib: { protocol: 200, own_cidr_route: none }
peer_ranges:
  - { name: clients, range: 10.100.0.0/16, asn: 65000, route_reflector_client: true, max_peers: $((n + 10)), hold_time: 90 }
EOC
      # shellcheck disable=SC2086 # PETREL_WRAP is a command line
      ip netns exec "$R" ${PETREL_WRAP:-} "$PETREL" run --config "$W/rr.yaml" --socket "$W/rr.sock" --log warn > "$W/rr.log" 2>&1 &
      pid=$!
      disown
      for _ in $(seq 100); do "$PETREL" status --socket "$W/rr.sock" >/dev/null 2>&1 && break; sleep 0.1; done
      ;;
    bird)
      cat > "$W/rr.conf" <<EOC
router id 10.100.0.1;
protocol device {}
protocol static { ipv4; route 10.244.0.0/24 blackhole; }
protocol bgp clients {
  local 10.100.0.1 as 65000; neighbor range 10.100.0.0/16 internal; direct;
  rr client; rr cluster id 198.18.0.1; hold time 90;
  ipv4 { import all; export all; };
}
EOC
      ip netns exec "$R" bird -c "$W/rr.conf" -s "$W/rr.ctl" -P "$W/rr.pid"
      for _ in $(seq 100); do [ -s "$W/rr.pid" ] && break; sleep 0.05; done
      pid=$(cat "$W/rr.pid")
      ;;
  esac
  local base_kb; base_kb=$(rss_kb "$pid" VmRSS)

  local t0 t_up t_done
  t0=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    local a; a=$(addr "$i")
    cat > "$W/c/$i.conf" <<EOC
router id $a;
protocol device {}
protocol static { ipv4; route $(prefix "$i") blackhole; }
protocol bgp up { local $a as 65000; neighbor 10.100.0.1 as 65000; direct; strict bind; hold time 90;
  connect delay time 1; connect retry time 2;
  ipv4 { import all; export filter { if source = RTS_STATIC then { bgp_next_hop = $(nexthop "$i"); accept; } reject; }; }; }
EOC
    ip netns exec "$C" bird -c "$W/c/$i.conf" -s "$W/c/$i.ctl" -P "$W/c/$i.pid"
  done
  t_up=$(date +%s.%N)
  # Every client must hold N + 1 routes: its own, the N-1 reflected, and the reflector's
  # own /24 (Petrel's pod CIDR; a static route in BIRD's case).
  local pending; pending=$(seq 0 $((n - 1)))
  local deadline=$(( $(date +%s) + ${DEADLINE:-600} ))
  while [ -n "$pending" ]; do
    pending=$(for i in $pending; do echo "$i"; done | xargs -P 4 -I{} sh -c \
      "birdc -s $W/c/{}.ctl show route count 2>/dev/null | grep -q '^$((n + 1)) of $((n + 1)) routes' || echo {}")
    [ "$(date +%s)" -lt "$deadline" ] || {
      local first; first=$(echo "$pending" | head -1)
      echo "scale-rr.sh: $sut N=$n not complete after ${DEADLINE:-600} s ($(echo "$pending" | wc -w) clients short); client $first:" >&2
      birdc -s "$W/c/$first.ctl" show protocols all up >&2 || true
      birdc -s "$W/c/$first.ctl" show route count >&2 || true
      tail -20 "$W/rr.log" >&2 2>/dev/null || true
      return 1
    }
  done
  t_done=$(date +%s.%N)
  local end_kb hwm_kb; end_kb=$(rss_kb "$pid" VmRSS); hwm_kb=$(rss_kb "$pid" VmHWM)
  sleep 3
  local set_kb anon_kb file_kb
  set_kb=$(rss_kb "$pid" VmRSS); anon_kb=$(rss_kb "$pid" RssAnon); file_kb=$(rss_kb "$pid" RssFile)
  awk -v s="$sut" -v n="$n" -v t0="$t0" -v up="$t_up" -v done="$t_done" -v b="$base_kb" -v e="$end_kb" -v h="$hwm_kb" \
      -v st="$set_kb" -v an="$anon_kb" -v fi="$file_kb" 'BEGIN {
    r = n * (n - 1)
    printf "sut=%s n=%d routes=%d start_s=%.2f total_s=%.2f after_s=%.2f rss_mb=%.1f hwm_mb=%.1f b/route=%.1f settled: rss_mb=%.1f anon_mb=%.1f file_mb=%.1f b/route=%.1f\n",
      s, n, r, up - t0, done - t0, done - up, e / 1024, h / 1024, (e - b) * 1024 / r, st / 1024, an / 1024, fi / 1024, (st - b) * 1024 / r }'
}

for n in "${SIZES[@]}"; do
  for sut in $SUTS; do
    run "$sut" "$n"
  done
done
