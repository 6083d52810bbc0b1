#!/usr/bin/env bash
# Petrel's tests in one command, on a fresh Debian 12 machine, as root:
#
#   ./test.sh [extra cargo-nextest arguments, e.g. -E 'binary(storm)']
#
# Installs the Debian packages the tests run (BIRD, GoBGP, FRR, containerd, the reference
# CNI plugins) when any is missing, puts root in frrvty (zebra
# wants it), stops the services the packages may have started in the root namespace (the
# tests run their own daemons, each in namespaces the test makes), installs cargo-nextest
# if it is absent, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (the tests make network namespaces)" >&2
  exit 1
fi

pkgs=(bird2 gobgpd frr iproute2 iputils-ping procps util-linux iptables
  containerd runc busybox-static containernetworking-plugins build-essential)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
  for s in bird frr gobgpd containerd; do
    (command -v systemctl >/dev/null && systemctl stop "$s") >/dev/null 2>&1 || true
    (command -v service >/dev/null && service "$s" stop) >/dev/null 2>&1 || true
  done
fi
if ! id -nG root | grep -qw frrvty; then
  usermod -a -G frrvty root
fi

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

exec cargo nextest run --workspace "$@"
