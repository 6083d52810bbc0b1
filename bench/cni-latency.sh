#!/usr/bin/env bash
# CNI ADD/DEL latency and throughput of petrel-cni beside the reference ptp + host-local,
# in one run, in throwaway namespaces (root; needs containernetworking-plugins).
#   bench/cni-latency.sh            ROUNDS=100 by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -p petrel-cni >&2
cargo bench -p petrel-tests --bench cni
