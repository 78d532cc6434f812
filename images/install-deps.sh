#!/usr/bin/env bash
# Debian packages that `make images` needs (run as root on Debian bookworm; idempotent: installs
# only what is missing, so a second run does not touch the network).
#
#   bash images/install-deps.sh
#
# buildah builds the repository's Dockerfiles without a daemon or registry; mmdebstrap makes the
# local Debian base they build on. Pinned to the bookworm versions the images were built with;
# a security update that replaces one is taken rather than failing the install. (apt also pulls
# in netavark and iptables as buildah's dependencies; `make images` never runs them: builds use
# --isolation chroot, which shares the host network and sets up nothing.)
set -euo pipefail

PACKAGES=(
  buildah=1.28.2+ds1-3+deb12u1+b3   # bud --isolation chroot --layers, push docker-archive:
  mmdebstrap=1.3.5-7                # the local base: bookworm minbase + python3
)

log() { printf '[install-deps] %s\n' "$*" >&2; }

if [[ "$(id -u)" != 0 ]]; then
  log "must run as root (apt-get install)"; exit 1
fi

missing=()
for spec in "${PACKAGES[@]}"; do
  name="${spec%%=*}"
  if ! dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$spec")
  fi
done
if ((${#missing[@]} == 0)); then
  log "all installed"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log "installing ${missing[*]}"
apt-get update -qq
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  log "pinned versions unavailable; installing the current bookworm versions"
  apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}"
fi
