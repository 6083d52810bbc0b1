#!/usr/bin/env bash
# BGP-to-FIB convergence of Petrel beside BIRD, FRR and the `ip -batch` floor, in one run.
#
#   bench/fib-convergence.sh [N ...]    (default: 100000 1000000; root; builds release)
#   RUNS=3 (default) runs per system; the median is reported.
#
# For each N, an injector in a namespace sends N IPv4 prefixes over eBGP to the system
# under test, which must install them in its namespace's FIB; then it withdraws them all and
# announces them all again. bgp-fib.sh (the shared harness, vendored here) measures from the
# first installed route to the last, the SUT's resident memory at that moment, and the time
# until the withdrawal and the re-announcement are in the kernel. Prints every run, then the
# medians and the ratios to Petrel (above 1: Petrel is faster / smaller).
#
# INJECTOR=raw (the default) feeds every SUT the same pre-encoded stream; INJECTOR=bird uses
# a BIRD injector, which sometimes holds back its last UPDATE for about 3 s (it hits
# whichever system is unlucky, hence the medians). FLAP=0 skips the withdraw/re-announce.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-3}
export INJECTOR=${INJECTOR:-raw} FLAP=${FLAP:-1}
cargo build --release -p petrel --manifest-path "$ROOT/Cargo.toml" >&2
PETREL="$ROOT/target/release/petrel"
SIZES=("$@"); [ ${#SIZES[@]} -eq 0 ] && SIZES=(100000 1000000)

petrel_cmd='cat > $WORKDIR/petrel.yaml <<EOC
node: { asn: 65002, router_id: 192.0.2.2, pod_cidrs: [10.244.0.0/24] }
peers:
  - { name: inj, address: 192.0.2.1, asn: 65001, hold_time: 90, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }
fib: { protocol: 200, own_cidr_route: none }
EOC
'"$PETREL"' run --config $WORKDIR/petrel.yaml --socket $WORKDIR/petrel.sock --log warn > $WORKDIR/petrel.log 2>&1 &
echo $! > $WORKDIR/sut.pid'

for N in "${SIZES[@]}"; do
  echo "== N=$N, $RUNS run(s) each"
  out=$(mktemp)
  for r in $(seq "$RUNS"); do
    for sut in floor bird frr; do
      BENCH_TIMEOUT=900 "$HERE/bgp-fib.sh" "$sut" "$N" | tee -a "$out"
    done
    SUT_PROTO=200 BENCH_TIMEOUT=900 SUT_CMD="$petrel_cmd" "$HERE/bgp-fib.sh" custom "$N" \
      | sed 's/sut=custom/sut=petrel/' | tee -a "$out"
  done
  awk '
    function median(list,    n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((n + 1) / 2)]
    }
    {
      delete f
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      s = f["sut"]; if (!(s in seen)) { seen[s] = 1; order[++k] = s }
      t[s] = t[s] " " f["first_to_all_s"]; b[s] = b[s] " " f["bytes_per_route"]
      if ("withdraw_s" in f) { w[s] = w[s] " " f["withdraw_s"]; r[s] = r[s] " " f["reannounce_s"] }
    }
    END {
      for (i = 1; i <= k; i++) { s = order[i]; mt[s] = median(t[s]); mb[s] = median(b[s])
        printf "median %-6s first_to_all_s=%.3f bytes_per_route=%d", s, mt[s], mb[s]
        if (s in w) { mw[s] = median(w[s]); mr[s] = median(r[s]); printf " withdraw_s=%.3f reannounce_s=%.3f", mw[s], mr[s] }
        printf "\n" }
      for (i = 1; i <= k; i++) { s = order[i]; if (s == "petrel") continue
        printf "ratio %s/petrel: time %.2f", s, mt[s] / mt["petrel"]
        if (mb[s] > 0) printf ", bytes per route %.2f", mb[s] / mb["petrel"]
        if ((s in mw) && mw["petrel"] > 0) printf ", withdraw %.2f, re-announce %.2f", mw[s] / mw["petrel"], mr[s] / mr["petrel"]
        printf "\n" }
    }' "$out"
  rm -f "$out"
done
