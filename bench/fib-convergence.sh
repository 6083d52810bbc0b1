#!/usr/bin/env bash
# BGP-to-FIB convergence of Petrel beside BIRD, FRR and the `ip -batch` floor, in one run.
#
#   bench/fib-convergence.sh [N ...]        (default: 100000 1000000; root; release build)
#
# For each N, a BIRD injector in a namespace sends N IPv4 prefixes over eBGP to the system
# under test, which must install them in its namespace's FIB (bgp-fib.sh, the shared harness,
# measures from the first installed route to the last, and the SUT's resident memory).
# Prints bgp-fib.sh's line per SUT and the ratios against Petrel.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cargo build --release -p petrel --manifest-path "$ROOT/Cargo.toml" >&2
PETREL="$ROOT/target/release/petrel"
SIZES=("$@"); [ ${#SIZES[@]} -eq 0 ] && SIZES=(100000 1000000)

for N in "${SIZES[@]}"; do
  echo "== N=$N"
  out=$(mktemp)
  for sut in floor bird frr; do
    BENCH_TIMEOUT=900 "$HERE/bgp-fib.sh" "$sut" "$N" | tee -a "$out"
  done
  # Petrel as the harness's custom SUT: same addresses, ASNs and peer.
  SUT_PROTO=200 BENCH_TIMEOUT=900 SUT_CMD='cat > $WORKDIR/petrel.yaml <<EOC
node: { asn: 65002, router_id: 192.0.2.2, pod_cidrs: [10.244.0.0/24] }
peers:
  - { name: inj, address: 192.0.2.1, asn: 65001, hold_time: 90, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }
fib: { protocol: 200, own_cidr_route: none }
EOC
'"$PETREL"' run --config $WORKDIR/petrel.yaml --socket $WORKDIR/petrel.sock --log warn > $WORKDIR/petrel.log 2>&1 &
echo $! > $WORKDIR/sut.pid' "$HERE/bgp-fib.sh" custom "$N" | sed 's/sut=custom/sut=petrel/' | tee -a "$out"
  awk -v n="$N" '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1]] = kv[2] } sut[NR] = $1 }
    END {
      p = "sut=petrel"
      for (i = 1; i <= NR; i++) if (sut[i] != p) {
        t = v[sut[i], "first_to_all_s"]; b = v[sut[i], "bytes_per_route"]
        printf "ratio %s/petrel: time %.2f", substr(sut[i], 5), (t > 0 ? t / v[p, "first_to_all_s"] : 0)
        if (b > 0) printf ", bytes per route %.2f", b / v[p, "bytes_per_route"]
        printf "\n"
      }
    }' "$out"
  rm -f "$out"
done
