#!/usr/bin/env bash
# Build the sandbox root filesystem: Debian bookworm minbase (debootstrap), then apt-get install
# of sandbox-image/packages.txt, the pinned PyPI packages of sandbox-image/requirements.txt, and
# the files of sandbox-image/overlay/.
#
# Usage:
#   build-rootfs.sh [--no-smoke-test] OUT_DIR   build into OUT_DIR.tmp.$$, check it, swap it in
#   build-rootfs.sh --check OUT_DIR             only run the runsc smoke test on an existing image
#   build-rootfs.sh --stamp                     print the stamp the current sources would produce
#
# Environment:
#   ROOTFS_SMOKE_TEST=0   same as --no-smoke-test (docker build cannot run runsc)
#   DEBIAN_MIRROR=URL     override the mirror taken from the host's apt sources
#   PIP_INDEX_URL, http(s)_proxy, no_proxy  passed to pip for requirements.txt (default: PyPI)
#
# The result contains:
#   /.sandbox-image-stamp                  sha256 over this script and every file of sandbox-image/
#   /usr/lib/python3/dist-packages         the Debian Python libraries of packages.txt
#   /usr/local/lib/python3.11/dist-packages  requirements.txt (pip, no EXTERNALLY-MANAGED marker)
#   /etc/pip.conf and other overlay files  copied from sandbox-image/overlay/
#   /etc/matplotlibrc                      backend: Agg (no display in a sandbox)
#   /root/.cache/matplotlib                matplotlib's font cache, built once here
#   /.sandbox/                             empty; the server bind-mounts its agent here (ro)
#   /usr/lib/sandbox/libstatx-shim.so      + /etc/ld.so.preload naming it (see statx-shim.c)
#   /etc/{resolv.conf,hosts,hostname}      sandbox-local, never the host's
#   /dev                                   empty: runsc provides its own /dev (spec mount)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
IMAGE_DIR="$REPO_DIR/sandbox-image"
PACKAGES_FILE="$IMAGE_DIR/packages.txt"
REQUIREMENTS_FILE="$IMAGE_DIR/requirements.txt"   # optional
OVERLAY_DIR="$IMAGE_DIR/overlay"                  # optional; copied over the image as is
CHECK_SCRIPT=check-image.py                       # in IMAGE_DIR, run by the smoke test
SHIM_SRC="$IMAGE_DIR/statx-shim.c"
SHIM_PATH=/usr/lib/sandbox/libstatx-shim.so   # path inside the image
STAMP_NAME=.sandbox-image-stamp
SUITE=bookworm

log() { printf 'build-rootfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The stamp is a content hash of everything that determines the image. setup.sh compares it
# with the one inside an existing image to decide whether to rebuild; the server may also use
# it to tell whether a checkpoint/snapshot was taken on the same base image.
# Hash file contents under names relative to the repository so the stamp does not depend on
# the checkout path. Every file below sandbox-image/ counts (package lists, overlay, checks):
# adding, removing, renaming or editing any of them changes the stamp.
compute_stamp() {
    local f
    {
        printf '%s\n' "$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
        find "$IMAGE_DIR" -type f -print
    } | while IFS= read -r f; do
        printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "${f#"$REPO_DIR"/}"
    done | LC_ALL=C sort -k2 | sha256sum | cut -d' ' -f1
}

# Packages, space-separated: strip comments (whole-line and trailing); every word is a package.
read_packages() {
    local pkgs
    pkgs=$(sed -e 's/#.*//' "$PACKAGES_FILE" | awk '{ for (i = 1; i <= NF; i++) print $i }' | paste -sd' ' -)
    [[ -n "$pkgs" ]] || die "no packages in $PACKAGES_FILE"
    echo "$pkgs"
}

# requirements.txt without comments and blank lines (may be empty, or the file missing).
read_requirements() {
    [[ -f "$REQUIREMENTS_FILE" ]] || return 0
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$REQUIREMENTS_FILE" | grep -v '^$' || true
}

# Every line of requirements.txt must be `name==version` (checked before anything is built).
check_requirements() {
    local line
    while IFS= read -r line; do
        [[ -z "$line" || "$line" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+$ ]] \
            || die "$REQUIREMENTS_FILE: '$line' is not a name==version pin"
    done <<<"$(read_requirements)"
}

# Run a command inside the image being built (chroot $1) with a clean environment: the host's
# (PIP_*, PYTHON*, MPL*, ...) must not leak in. VAR=VALUE arguments before the command are added.
in_image() {
    local root=$1
    shift
    local vars=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
    while [[ $# -gt 0 && "$1" == *=* ]]; do vars+=("$1"); shift; done
    env -i "${vars[@]}" chroot "$root" "$@"
}

# apt-get install the packages of packages.txt inside the minbase image. Not debootstrap
# --include: its resolver always takes the first alternative of an "a | b" dependency, even
# when b is listed (python3-fonttools' "python3-scipy | python3-munkres" pulled scipy, pythran,
# g++ and Boost headers: a 1.5 GB image instead of 0.8). apt honours what is listed, and
# leaves recommends out here.
install_packages() {
    local root=$1 var vars=(DEBIAN_FRONTEND=noninteractive) proc=0
    for var in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
        if [[ -n "${!var:-}" ]]; then vars+=("$var=${!var}"); fi
    done
    # Some maintainer scripts like /proc; the EXIT trap unmounts it if we fail. `docker build`
    # may not allow the mount: apt and dpkg work without it (as debootstrap does there).
    if mount -t proc proc "$root/proc" 2>/dev/null; then
        proc=1
    else
        log "/proc not mounted in the image (container build?); installing without it"
    fi
    # shellcheck disable=SC2086 # PACKAGES is a word list
    if ! { in_image "$root" "${vars[@]}" apt-get update \
            && in_image "$root" "${vars[@]}" apt-get install -y --no-install-recommends \
                -o Dpkg::Use-Pty=0 $PACKAGES; } >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "apt-get install failed (full log: $LOG)"
    fi
    in_image "$root" apt-get clean
    if [[ $proc == 1 ]]; then umount "$root/proc"; fi
}

# pip-install requirements.txt into the image: every line pinned with ==, wheels only (no
# compiler in the image), no dependency resolution (so nothing unpinned slips in); `pip check`
# then fails the build if a dependency is neither pinned there nor a Debian package.
install_requirements() {
    local root=$1 reqs var vars=()
    reqs=$(read_requirements)
    if [[ -z "$reqs" ]]; then
        log "no PyPI requirements"
        return 0
    fi
    in_image "$root" python3 -c 'import pip' 2>/dev/null \
        || die "requirements.txt needs pip in the image: add python3-pip to packages.txt"
    printf '%s\n' "$reqs" >"$root/tmp/requirements.txt"
    for var in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY PIP_INDEX_URL; do
        if [[ -n "${!var:-}" ]]; then vars+=("$var=${!var}"); fi
    done
    # Trust what the builder trusts (a proxy or a private index may need the host's CAs).
    if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/build-ca.crt"
        vars+=(PIP_CERT=/tmp/build-ca.crt)
    fi
    log "pip install from ${PIP_INDEX_URL:-PyPI}: $(paste -sd' ' <<<"$reqs")"
    if ! in_image "$root" "${vars[@]}" python3 -m pip install --no-cache-dir --no-deps \
            --only-binary=:all: --disable-pip-version-check --root-user-action=ignore \
            --no-warn-script-location -r /tmp/requirements.txt >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        die "pip install of requirements.txt failed (full log: $LOG)"
    fi
    if ! in_image "$root" python3 -m pip check --disable-pip-version-check >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        die "pip check failed: pin the missing dependencies in requirements.txt (or add their Debian packages)"
    fi
    rm -f "$root/tmp/requirements.txt" "$root/tmp/build-ca.crt"
}

# Copy sandbox-image/overlay/ over the image: root-owned, 0644 (0755 if executable) files.
copy_overlay() {
    local root=$1 f rel mode
    [[ -d "$OVERLAY_DIR" ]] || return 0
    while IFS= read -r f; do
        rel=${f#"$OVERLAY_DIR"/}
        mode=0644
        [[ -x "$f" ]] && mode=0755
        install -D -o 0 -g 0 -m "$mode" "$f" "$root/$rel"
    done < <(find "$OVERLAY_DIR" -type f)
}

# matplotlib: Agg as the default backend (a sandbox has no display; the server also sets
# MPLBACKEND=Agg, this covers processes that drop the environment), and its font cache built
# once here instead of in every new sandbox (~/.cache/matplotlib, HOME=/root in sandboxes).
configure_matplotlib() {
    local root=$1 rc=$1/etc/matplotlibrc
    in_image "$root" python3 -c 'import matplotlib' 2>/dev/null || return 0
    # Debian's /etc/matplotlibrc (on matplotlib's search path, a commented-out copy of the
    # default rc) has "##backend: Agg": make it a setting, keep the rest.
    if [[ -f "$rc" ]] && grep -Eq '^#?[[:space:]]*backend[[:space:]]*:' "$rc"; then
        sed -E -i '0,/^#?[[:space:]]*backend[[:space:]]*:.*/s//backend: Agg/' "$rc"
    else
        printf 'backend: Agg\n' >>"$rc"
    fi
    in_image "$root" python3 -c '
import matplotlib, matplotlib.font_manager
assert matplotlib.get_backend().lower() == "agg", matplotlib.get_backend()
' || die "matplotlib configuration failed"
}

# The bookworm "main" mirror the host already uses (a proxy or local mirror on CI machines),
# from deb822 .sources files first, then the one-line sources.list format.
find_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        # Paragraph mode: one stanza per record. Need Types: deb, Suites containing exactly
        # "bookworm" (not bookworm-security), Components containing main, not Enabled: no.
        uri=$(awk -v RS= -v suite="$SUITE" '
            {
                types = ""; uris = ""; suites = ""; comps = ""; enabled = "yes"
                n = split($0, lines, "\n")
                for (i = 1; i <= n; i++) {
                    line = lines[i]
                    if (line ~ /^[ \t]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    val = line; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "components") comps = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled == "no") next
                if ((" " types " ") !~ / deb /) next
                if ((" " suites " ") !~ (" " suite " ")) next
                if ((" " comps " ") !~ / main /) next
                split(uris, u, /[ \t]+/); print u[1]; exit
            }' "$f")
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        # deb [options] URI SUITE COMPONENTS...
        uri=$(sed -e 's/\[[^]]*\]//' /etc/apt/sources.list | awk -v suite="$SUITE" '
            $1 == "deb" && $3 == suite {
                for (i = 4; i <= NF; i++) if ($i == "main") { print $2; exit }
            }')
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Unmount anything still mounted below $1 (deepest first). debootstrap mounts /proc and /sys
# in the target and normally unmounts them, but not if it is killed.
umount_below() {
    local dir=$1 m
    [[ -d "$dir" ]] || return 0
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# Remove a half-built tree. --one-file-system: never descend into a mount we failed to remove.
remove_tree() {
    [[ -e "$1" ]] || return 0
    umount_below "$1"
    rm -rf --one-file-system -- "$1"
}

# Start the image under runsc the way the server does (writable root, memory overlay, no
# network) and check that ls -l (the statx shim), stat and python3 work.
smoke_test() {
    local rootfs=$1 rc=0
    command -v runsc >/dev/null || die "runsc not found (needed for the smoke test; use --no-smoke-test to skip)"
    SMOKE_WORK=$(mktemp -d /tmp/rootfs-smoke.XXXXXX)
    # Fixed-length id: runsc confuses ids that are prefixes of each other.
    SMOKE_ID=$(printf 'rootfs-smoke-%010d' "$$")
    mkdir -p "$SMOKE_WORK/state" "$SMOKE_WORK/bundle"
    # Embedded in a JSON string below: keep it free of double quotes and backslashes.
    # sandbox-image/ is mounted at /.sandbox (where the server mounts its agent) for the check
    # script; its last line of output is "ok".
    local cmd="set -e; ls -l / >/dev/null; ls /.sandbox /usr/lib/sandbox >/dev/null; stat / >/dev/null;"
    cmd+=" test \$(stat -c %a /tmp) = 1777; echo written >/tmp/smoke; python3 /.sandbox/$CHECK_SCRIPT"
    cat >"$SMOKE_WORK/bundle/config.json" <<EOF
{
  "ociVersion": "1.0.0",
  "process": {
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/sh", "-c", "$cmd"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
            "HOME=/root", "PYTHONDONTWRITEBYTECODE=1", "MPLBACKEND=Agg"],
    "cwd": "/"
  },
  "root": {"path": "$rootfs", "readonly": false},
  "hostname": "sandbox",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/.sandbox", "type": "bind", "source": "$IMAGE_DIR", "options": ["rbind", "ro"]}
  ],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}
EOF
    # Not detached and stdin from /dev/null, so nothing waits on inherited stdio.
    # --overlay2=root:memory keeps the check's writes out of the image (verified below).
    # timeout: a wedged runsc must not hang CI forever. The EXIT trap deletes the container.
    timeout 120 runsc --root="$SMOKE_WORK/state" --network=none --overlay2=root:memory \
        run --bundle "$SMOKE_WORK/bundle" "$SMOKE_ID" </dev/null >"$SMOKE_WORK/out" 2>"$SMOKE_WORK/err" || rc=$?
    if [[ $rc -ne 0 || "$(tail -n 1 "$SMOKE_WORK/out")" != "ok" ]]; then
        log "smoke test failed (exit $rc); stdout:"; sed 's/^/  /' "$SMOKE_WORK/out" >&2
        log "stderr (runsc's RLIMIT notes removed):"
        grep -v -e RLIMIT_MEMLOCK -e RLIMIT_NOFILE "$SMOKE_WORK/err" | tail -n 30 | sed 's/^/  /' >&2
        return 1
    fi
    if [[ -e "$rootfs/tmp/smoke" ]]; then
        rm -f "$rootfs/tmp/smoke"
        log "smoke test wrote through to the image (overlay not applied)"; return 1
    fi
    smoke_cleanup
    log "smoke test passed (ls -l, stat, python3 and its libraries under runsc)"
}

SMOKE_WORK="" SMOKE_ID="" TMP="" OLD="" LOG=""
smoke_cleanup() {
    if [[ -n "$SMOKE_WORK" ]]; then
        if [[ -n "$SMOKE_ID" ]]; then
            runsc --root="$SMOKE_WORK/state" delete -force "$SMOKE_ID" >/dev/null 2>&1 || true
        fi
        rm -rf -- "$SMOKE_WORK"
    fi
    SMOKE_WORK="" SMOKE_ID=""
}
# One EXIT trap for every exit path (errors under set -e, signals via the INT/TERM trap).
on_exit() {
    local rc=$?
    smoke_cleanup
    [[ -z "$TMP" ]] || remove_tree "$TMP"
    [[ -z "$OLD" ]] || remove_tree "$OLD"
    if [[ -n "$LOG" && $rc -eq 0 ]]; then rm -f -- "$LOG"; fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------------------------------------

smoke=${ROOTFS_SMOKE_TEST:-1}
mode=build
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-smoke-test) smoke=0; shift ;;
        --check) mode=check; shift ;;
        --stamp) compute_stamp; exit 0 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[[ $# -eq 1 ]] || usage
OUT=$(realpath -m -- "$1")
[[ "$OUT" != / ]] || die "refusing to build into /"
[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, device nodes, runsc)"

if [[ $mode == check ]]; then
    [[ -f "$OUT/$STAMP_NAME" ]] || die "$OUT is not a built image (no $STAMP_NAME)"
    smoke_test "$OUT"
    exit 0
fi

for tool in debootstrap gcc; do
    command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs it)"
done

# Mistakes in the lists fail here, before anything is downloaded.
read_packages >/dev/null
check_requirements

start=$(date +%s)
TMP="$OUT.tmp.$$"
LOG=$(mktemp /tmp/build-rootfs.XXXXXX.log)

mkdir -p "$(dirname "$OUT")"
# Leftovers from builds that were killed (their pid is gone).
for stale in "$OUT".tmp.* "$OUT".old.*; do
    [[ -e "$stale" ]] || continue
    pid=${stale##*.}
    if [[ "$pid" =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then
        log "removing stale $stale"
        remove_tree "$stale"
    fi
done

STAMP=$(compute_stamp)
PACKAGES=$(read_packages)
MIRROR=$(find_mirror)
log "debootstrap $SUITE (minbase) from $MIRROR into $TMP (log: $LOG)"
if ! debootstrap --variant=minbase --components=main \
        "$SUITE" "$TMP" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "debootstrap failed (full log: $LOG)"
fi

R=$TMP
log "apt-get install $PACKAGES"
install_packages "$R"
# Debian marks its Python as "externally managed" (PEP 668): pip refuses to install into the
# system site unless given --break-system-packages, to protect apt-managed files on long-lived
# machines. A sandbox is disposable (its writes live in memory and vanish with it) and
# `pip install pkg` as root is exactly what users run there, so the marker goes. Debian's pip
# still installs into /usr/local/lib/python3.11/dist-packages, never over apt's files.
rm -f "$R"/usr/lib/python3*/EXTERNALLY-MANAGED
install_requirements "$R"

log "configuring image"
# Package caches and indexes are useless without apt access in the sandbox (~40 MB).
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/*
rm -f "$R"/var/log/bootstrap.log
# Documentation, manual pages and message translations: nothing in a sandbox reads them (no
# man, no info, C.UTF-8 locale). The copyright files stay. About 60 MB.
find "$R/usr/share/doc" ! -type d ! -name copyright -delete
find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$R"/usr/share/man/* "$R"/usr/share/info/*
find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
# debootstrap copied the host's resolv.conf/hosts/hostname in: never leak those. Network is
# off by default; with network on, the server is expected to provide its own resolver. A
# sandbox-local /etc/hosts avoids ~35 s lookup stalls for localhost.
rm -f "$R/etc/resolv.conf" "$R/etc/hosts" "$R/etc/hostname"
printf 'nameserver 127.0.0.1\n' >"$R/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n' >"$R/etc/hosts"
printf 'sandbox\n' >"$R/etc/hostname"
# Device nodes made by debootstrap are never used (runsc mounts its own /dev) and would stop
# the tree from being copied by unprivileged tools (docker COPY, cp without CAP_MKNOD).
find "$R/dev" -mindepth 1 -delete
# Mount point for the server's in-sandbox agent (bind-mounted read-only).
install -d -m 0755 "$R/.sandbox"
install -d -m 1777 "$R/tmp"
chmod 1777 "$R/tmp"   # install -d does not change the mode of an existing directory

log "building statx shim"
install -d -m 0755 "$R$(dirname "$SHIM_PATH")"
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$R$SHIM_PATH" "$SHIM_SRC"
chmod 0644 "$R$SHIM_PATH"
printf '%s\n' "$SHIM_PATH" >"$R/etc/ld.so.preload"

copy_overlay "$R"
configure_matplotlib "$R"

if [[ "$smoke" != 0 ]]; then
    smoke_test "$TMP"
else
    log "smoke test skipped"
fi

# Written last: an image with a stamp is a complete image.
printf '%s\n' "$STAMP" >"$R/$STAMP_NAME"

# Swap in. A directory cannot be renamed over a non-empty one, so move the old one aside first;
# OUT is missing only between the two renames (same filesystem, so both are plain renames).
# Sandboxes still running on the old tree lose files they have not opened yet once it is
# deleted, and checkpoints taken on it expect its contents: rebuild with the server stopped.
if [[ -e "$OUT" ]]; then
    OLD="$OUT.old.$$"
    mv -T -- "$OUT" "$OLD"
fi
mv -T -- "$TMP" "$OUT"
TMP=""
[[ -z "$OLD" ]] || remove_tree "$OLD"
OLD=""

size=$(du -sh --one-file-system "$OUT" | cut -f1)
log "done: $OUT ($size, stamp ${STAMP:0:12}) in $(( $(date +%s) - start ))s"
