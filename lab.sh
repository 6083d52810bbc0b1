#!/usr/bin/env bash
# The Petrel lab in one command: a top-of-rack router, nodes running the Petrel agent and
# pods made by the Petrel CNI plugin, all in network namespaces of this machine.
#
#   ./lab.sh up [--nodes 3] [--pods 2] [--router bird|frr|gobgp] [--topology tor|rr] [--json]
#   ./lab.sh status [--json]          ./lab.sh down
#   ./lab.sh add-pod n2 [--ip ADDR,ADDR]      ./lab.sh del-pod n2-p1
#
# Installs the Debian packages it needs (apt) when they are missing, builds Petrel (release),
# and hands over to target/release/petrel-lab. Run as root. Nothing is changed outside the
# lab's own namespaces and /run/petrel-lab.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "lab.sh: run as root (the lab makes network namespaces)" >&2
  exit 1
fi

router=bird
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --router) router="${args[$((i + 1))]:-bird}" ;;
    --router=*) router="${args[$i]#--router=}" ;;
  esac
done

pkgs=(iproute2 iputils-ping bird2)
case "$router" in
  frr) pkgs+=(frr) ;;
  gobgp | gobgpd) pkgs+=(gobgpd) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lab.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Package scripts may start the daemons in the root namespace; the lab runs its own.
  for s in bird frr gobgpd; do
    (command -v systemctl >/dev/null && systemctl stop "$s") >/dev/null 2>&1 || true
    (command -v service >/dev/null && service "$s" stop) >/dev/null 2>&1 || true
  done
fi
if [ "$router" = frr ] && ! id -nG root | grep -qw frrvty; then
  usermod -a -G frrvty root # zebra wants root in frrvty
fi

if ! command -v cargo >/dev/null; then
  echo "lab.sh: cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
echo "lab.sh: building petrel, petrel-cni, petrel-ipam, petrel-lab (release)" >&2
cargo build --release --quiet -p petrel -p petrel-cni -p petrel-tests --bins

exec target/release/petrel-lab "$@"
