#!/usr/bin/env bash
# An arm64 (aarch64) Debian sid chroot run through qemu-user on this x86-64 machine, for
# tools/wheels-arm64.sh (issue 20): sid ships CPython 3.13, 3.14 and 3.15 for arm64 (with -dev
# and -venv) and gcc, so one chroot builds and tests the wheels of those three natively.
#
#   bash tools/arm64-chroot.sh                     # make the chroot if missing; print its path
#   bash tools/arm64-chroot.sh run DIR... -- CMD   # run CMD in it, DIRs mounted at their own paths
#
# The chroot lives in ${PKEYGUARD_ARM64_CACHE:-$HOME/.cache/pkeyguard-arm64}/root. It is made
# (debootstrap --foreign, then its second stage under qemu) in a temporary folder beside it and
# renamed only when complete, so an interrupted run leaves no half-made chroot behind; the
# package list it was made with is recorded in it, and a change of that list makes it anew.
# Needs root (binfmt_misc, debootstrap, mount, chroot) and qemu-user-static (installed with
# apt-get if missing).
#
# arm64 programs run through the kernel's binfmt_misc: this script mounts
# /proc/sys/fs/binfmt_misc if it is not, and registers qemu-aarch64-static for aarch64 ELF
# files if no handler is there, with the F flag (the kernel opens the emulator at registration,
# so it works inside the chroot without a copy of it there).
#
# `run` mounts /proc, /dev, /sys and the given folders inside a private mount namespace
# (unshare -m): the mounts exist only for that command and go when it ends, killed or not. CMD
# runs with a clean environment (PATH, HOME, LANG, and PIP_* / HYPOTHESIS_PROFILE from the caller).
set -euo pipefail

CACHE=${PKEYGUARD_ARM64_CACHE:-$HOME/.cache/pkeyguard-arm64}
ROOTFS=$CACHE/root
MIRROR=${PKEYGUARD_SID_MIRROR:-http://deb.debian.org/debian}
# The three interpreters with their headers and venv, a C compiler, certificates for pip.
PACKAGES=python3.13-dev,python3.13-venv,python3.14-dev,python3.14-venv,python3.15-dev,python3.15-venv,gcc,libc6-dev,ca-certificates
STAMP=.pkeyguard-arm64-packages
BINFMT=/proc/sys/fs/binfmt_misc

say() { printf 'arm64-chroot: %s\n' "$*" >&2; }

ensure_binfmt() {
    if [[ ! -e $BINFMT/register ]]; then
        mount -t binfmt_misc binfmt_misc "$BINFMT" \
            || { say "cannot mount binfmt_misc on $BINFMT"; exit 2; }
    fi
    if [[ ! -x /usr/bin/qemu-aarch64-static ]]; then
        say "installing qemu-user-static (apt-get)"
        apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null
    fi
    # Some handler for aarch64 ELF already (binfmt-support, systemd-binfmt, an earlier run):
    # use it if it is enabled and has the F flag (else the emulator is not found in the chroot).
    local entry
    for entry in "$BINFMT"/qemu-aarch64 "$BINFMT"/aarch64; do
        [[ -e $entry ]] || continue
        if grep -qx enabled "$entry" && grep -q '^flags:.*F' "$entry"; then
            return
        fi
        say "$entry is there but disabled or without the F flag; registering it anew"
        echo -1 >"$entry"
    done
    # Debian's own line (magic and mask of an aarch64 ELF file, e_machine 0xb7; the emulator
    # through its argv[0]-preserving wrapper, flags OPF), as systemd-binfmt would register it.
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ -f $conf ]] || { say "no $conf (qemu-user-static)"; exit 2; }
    grep -v '^#' "$conf" >"$BINFMT/register"
}

arm64_pythons() { # the versions in the chroot, for messages
    local v out=()
    for v in 3.13 3.14 3.15; do out+=("$(chroot "$ROOTFS" "python$v" -V 2>&1)"); done
    local IFS=/
    echo "${out[*]}"
}

ensure_chroot() {
    ensure_binfmt
    if [[ -f $ROOTFS/$STAMP && $(cat "$ROOTFS/$STAMP") == "$PACKAGES" ]]; then
        [[ -n ${QUIET_IF_CACHED:-} ]] && return
        say "cached chroot $ROOTFS ($(arm64_pythons))"
        return
    fi
    [[ $(id -u) == 0 ]] || { say "needs root (debootstrap, chroot)"; exit 2; }
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9 # another run making it at the same time: wait for it, then use its chroot
    if [[ -f $ROOTFS/$STAMP && $(cat "$ROOTFS/$STAMP") == "$PACKAGES" ]]; then
        exec 9>&-
        ensure_chroot
        return
    fi
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (apt-get)"
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    fi
    local start=$SECONDS tmp=$CACHE/root.new
    rm -rf "$tmp" "$CACHE/root.old"
    say "making a Debian sid arm64 chroot in $ROOTFS (once; 15 to 20 minutes: the second stage runs under qemu)"
    # First stage here (download, unpack), second stage (configure) under qemu in the chroot,
    # in a private mount namespace so that its /proc mount goes with it.
    if ! debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" \
        sid "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || ! unshare --mount --propagation private -- \
            chroot "$tmp" /debootstrap/debootstrap --second-stage >>"$CACHE/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE/debootstrap.log" >&2
        say "debootstrap failed (log: $CACHE/debootstrap.log)"
        rm -rf "$tmp"
        exit 1
    fi
    rm -rf "$tmp"/var/cache/apt/archives/*.deb
    echo "$PACKAGES" >"$tmp/$STAMP"
    [[ -e $ROOTFS ]] && mv "$ROOTFS" "$CACHE/root.old"
    mv "$tmp" "$ROOTFS"
    rm -rf "$CACHE/root.old"
    exec 9>&-
    say "made $ROOTFS in $((SECONDS - start)) s ($(arm64_pythons))"
}

# shellcheck source=tools/chroot-run.sh
source "$(dirname "${BASH_SOURCE[0]}")/chroot-run.sh"
chroot_cli arm64-run "$@"
