#!/usr/bin/env bash
# CPython 3.14 and 3.15 for tools/wheels.sh (issue 20): Debian 12 has neither, Debian sid ships
# both (python3.14, python3.15, with -dev and -venv). This script keeps one Debian sid chroot
# that has them, made once (debootstrap, a few minutes) and reused after that, and runs
# commands inside it.
#
#   bash tools/sid-pythons.sh                     # make the chroot if missing; print its path
#   bash tools/sid-pythons.sh run DIR... -- CMD   # run CMD in it, DIRs mounted at their own paths
#
# The chroot lives in ${PKEYGUARD_SID_CACHE:-$HOME/.cache/pkeyguard-sid}/root. It is made in a
# temporary folder beside it and renamed only when complete, so an interrupted run leaves no
# half-made chroot behind; the package list it was made with is recorded in it, and a change of
# that list (below) makes it anew. Needs root (debootstrap, mount, chroot).
#
# `run` mounts /proc, /dev, /sys and the given folders inside a private mount namespace
# (unshare -m): the mounts exist only for that command and go when it ends, killed or not; the
# host's mount table never sees them. CMD runs with a clean environment (PATH, HOME, LANG, and
# PIP_* / HYPOTHESIS_PROFILE from the caller).
set -euo pipefail

CACHE=${PKEYGUARD_SID_CACHE:-$HOME/.cache/pkeyguard-sid}
ROOTFS=$CACHE/root
MIRROR=${PKEYGUARD_SID_MIRROR:-http://deb.debian.org/debian}
# What the wheels need in there: both interpreters with their headers and venv, a C compiler,
# certificates for pip.
PACKAGES=python3.14-dev,python3.14-venv,python3.15-dev,python3.15-venv,gcc,libc6-dev,ca-certificates
STAMP=.pkeyguard-sid-packages

say() { printf 'sid-pythons: %s\n' "$*" >&2; }

ensure_chroot() {
    if [[ -f $ROOTFS/$STAMP && $(cat "$ROOTFS/$STAMP") == "$PACKAGES" ]]; then
        [[ -n ${QUIET_IF_CACHED:-} ]] && return
        say "cached chroot $ROOTFS ($(chroot "$ROOTFS" python3.14 -V 2>&1), $(chroot "$ROOTFS" python3.15 -V 2>&1))"
        return
    fi
    [[ $(id -u) == 0 ]] || { say "needs root (debootstrap, chroot)"; exit 2; }
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9  # another run making it at the same time: wait for it, then use its chroot
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
    say "making a Debian sid chroot in $ROOTFS (once; a few minutes)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" sid "$tmp" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1; then
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
    say "made $ROOTFS in $((SECONDS - start)) s ($(chroot "$ROOTFS" python3.14 -V 2>&1), $(chroot "$ROOTFS" python3.15 -V 2>&1))"
}

# shellcheck source=tools/chroot-run.sh
source "$(dirname "${BASH_SOURCE[0]}")/chroot-run.sh"
chroot_cli sid-run "$@"
