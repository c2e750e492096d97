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

run_in_chroot() {  # run_in_chroot DIR... -- CMD...
    local dirs=()
    while (($#)) && [[ $1 != -- ]]; do
        dirs+=("$(realpath "$1")")
        shift
    done
    [[ ${1:-} == -- ]] || { say "usage: $0 run DIR... -- CMD..."; exit 2; }
    shift
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"  # pip reaches PyPI from inside
    local keep=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}")
    local name
    for name in HYPOTHESIS_PROFILE PIP_DEFAULT_TIMEOUT PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
        [[ -n ${!name:-} ]] && keep+=("$name=${!name}")
    done
    # The certificates the host's pip trusts (a machine behind a TLS-inspecting proxy has its
    # own CA there), for pip inside.
    local cert=${PIP_CERT:-${SSL_CERT_FILE:-}}
    if [[ -n $cert && -f $cert ]]; then
        cp "$cert" "$ROOTFS/etc/ssl/host-pip-cert.pem"
        keep+=(PIP_CERT=/etc/ssl/host-pip-cert.pem)
    fi
    # The mounts below are made in a new mount namespace, private from the host's: they vanish
    # with the last process in it, however it ends.
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount --propagation private -- /bin/bash -euc '
        root=$1; shift
        ndirs=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        for ((i = 0; i < ndirs; i++)); do
            mkdir -p "$root$1"
            mount --bind "$1" "$root$1"
            shift
        done
        exec chroot "$root" /usr/bin/env -i "$@"
    ' sid-run "$ROOTFS" "${#dirs[@]}" "${dirs[@]}" "${keep[@]}" "$@"
}

case ${1:-} in
"")
    ensure_chroot
    echo "$ROOTFS"
    ;;
run)
    shift
    QUIET_IF_CACHED=1 ensure_chroot
    run_in_chroot "$@"
    ;;
*)
    say "usage: $0 [run DIR... -- CMD...]"
    exit 2
    ;;
esac
