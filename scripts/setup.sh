#!/usr/bin/env bash
# Prepare this machine to run the sandbox server. Idempotent; run as root on Debian 12.
#
#  1. apt-installs what is missing (apt-get update only if something is missing):
#     runsc (gVisor), debootstrap + keyring, gcc/libc6-dev (statx shim), g++ (libFuzzer, for
#     scripts/fuzz.sh), iproute2, nftables (sandbox networking), ca-certificates, curl.
#  2. builds the sandbox root filesystem with scripts/build-rootfs.sh at
#     ${SANDBOX_ROOTFS:-/var/lib/cloud-run-sandbox/rootfs} if it is missing or its stamp
#     (/.sandbox-image-stamp) differs from `build-rootfs.sh --stamp`, i.e. after any change to
#     build-rootfs.sh or to a file under sandbox-image/ (packages.txt, requirements.txt, ...).
#     The build downloads from the Debian mirror and, for requirements.txt, from PyPI; it takes
#     a few minutes (docs/libraries.md).
#  3. creates /var/lib/cloud-run-sandbox/{checkpoints,snapshots}.
#
# A second run with nothing to do takes well under a second.
# Environment: SANDBOX_ROOTFS, DEBIAN_MIRROR, ROOTFS_SMOKE_TEST, PIP_INDEX_URL and the proxy
# variables are passed on to build-rootfs.sh.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR=/var/lib/cloud-run-sandbox
ROOTFS=${SANDBOX_ROOTFS:-$STATE_DIR/rootfs}
STAMP_NAME=.sandbox-image-stamp

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root"

install -d -m 0755 "$STATE_DIR"
# Serialize with other runs (CI and a dev server on the same host). fd 9 stays open, and the
# lock held, until this script exits.
exec 9>"$STATE_DIR/.setup.lock"
if ! flock -n 9; then
    log "another setup is running; waiting for it"
    flock -w 1800 9 || die "timed out waiting for $STATE_DIR/.setup.lock"
fi

# --- packages ----------------------------------------------------------------------------------
PACKAGES=(debootstrap debian-archive-keyring gcc g++ libc6-dev iproute2 nftables ca-certificates curl)
missing=()
# runsc counts as present if any runsc is on PATH (e.g. a pinned release in /usr/local/bin):
# do not pull in the Debian one next to it.
command -v runsc >/dev/null || missing+=(runsc)
for pkg in "${PACKAGES[@]}"; do
    # db:Status-Status is "installed" only for fully installed packages (not "config-files").
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == installed ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- sandbox root filesystem ---------------------------------------------------------------------
want=$("$SCRIPT_DIR/build-rootfs.sh" --stamp)
have=$(cat "$ROOTFS/$STAMP_NAME" 2>/dev/null || true)
if [[ "$want" != "$have" ]]; then
    if [[ -z "$have" ]]; then
        log "building sandbox root filesystem at $ROOTFS"
    else
        log "sandbox root filesystem at $ROOTFS is stale (${have:0:12} != ${want:0:12}); rebuilding"
    fi
    "$SCRIPT_DIR/build-rootfs.sh" "$ROOTFS"
else
    log "sandbox root filesystem up to date ($ROOTFS, ${want:0:12})"
fi

# --- local state directories -------------------------------------------------------------------
# 0700: checkpoint images hold sandbox memory, snapshots hold tenant files.
install -d -m 0700 "$STATE_DIR/checkpoints" "$STATE_DIR/snapshots"
log "ready"
