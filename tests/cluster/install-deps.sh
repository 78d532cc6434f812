#!/usr/bin/env bash
# Debian packages the test cluster's real nodes need (run as root on Debian bookworm; idempotent:
# installs only what is missing, so a second run does not touch the network).
#
#   bash tests/cluster/install-deps.sh
#
# Pinned to the bookworm versions the real nodes were tested with where Debian still serves
# them; a security update that replaces one (e.g. runc) is taken rather than failing the install.
set -euo pipefail

# package=version, or a bare name where any bookworm version will do.
PACKAGES=(
  runc=1.1.5+ds1-1+deb12u1                        # OCI runtime under containerd-shim-runc-v2
  containernetworking-plugins=1.1.1+ds1-3+b5      # bridge, host-local, loopback in /usr/lib/cni
  iproute2                                        # ip link/addr for the nodes' bridge
  util-linux                                      # unshare, nsenter, mount
  gcc libc6-dev                                   # the static pause binary (pause.c)
  openssl                                         # certificates when `cryptography` is absent
  mmdebstrap                                      # the Debian rootfs of the test image
)
# The image builds' packages (buildah, ...) are in images/install-deps.sh.
# One-off additions without editing this file: DSA_EXTRA_DEBS="pkg pkg=version".
# shellcheck disable=SC2206
PACKAGES+=(${DSA_EXTRA_DEBS:-})

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
  # A pinned version gone from the mirror (superseded by a security update): take the current one.
  log "pinned versions unavailable; installing the current bookworm versions"
  apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}"
fi
