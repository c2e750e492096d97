# shellcheck shell=bash
# Sourced by tools/sid-pythons.sh and tools/arm64-chroot.sh: one way to run a command in a
# cached Debian chroot, whatever its architecture.
#
# chroot_run ROOTFS LABEL DIR... -- CMD...: CMD in ROOTFS, with /proc, /dev, /sys and each DIR
# mounted at its own path, in a private mount namespace (unshare -m): the mounts exist only for
# that command and go when it ends, killed or not; the host's mount table never sees them.
# CMD runs with a clean environment (PATH, HOME, LANG, TERM, and HYPOTHESIS_PROFILE / PIP_*
# from the caller). LABEL names the inner shell in `ps`.
chroot_run() {
    local rootfs=$1 label=$2
    shift 2
    local dirs=()
    while (($#)) && [[ $1 != -- ]]; do
        dirs+=("$(realpath "$1")")
        shift
    done
    [[ ${1:-} == -- ]] || { echo "usage: run DIR... -- CMD..." >&2; exit 2; }
    shift
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf" # pip reaches PyPI from inside
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
        cp "$cert" "$rootfs/etc/ssl/host-pip-cert.pem"
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
    ' "$label" "$rootfs" "${#dirs[@]}" "${dirs[@]}" "${keep[@]}" "$@"
}

# chroot_cli LABEL ARGS...: the command line of a script that keeps a chroot in $ROOTFS and
# defines ensure_chroot (make it if missing, quietly when QUIET_IF_CACHED is set):
#   (no arguments)         make the chroot if missing; print its path
#   run DIR... -- CMD...   run CMD in it (chroot_run)
# shellcheck disable=SC2153 # ROOTFS is the sourcing script's
chroot_cli() {
    local label=$1
    shift
    case ${1:-} in
    "")
        ensure_chroot
        echo "$ROOTFS"
        ;;
    run)
        shift
        QUIET_IF_CACHED=1 ensure_chroot
        chroot_run "$ROOTFS" "$label" "$@"
        ;;
    *)
        echo "usage: $0 [run DIR... -- CMD...]" >&2
        exit 2
        ;;
    esac
}
