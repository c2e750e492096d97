#!/usr/bin/env bash
# The benchmark on a machine with PKU, on every CPython it has, in one command:
#
#   bash benchmarks/pku-device.sh [OUTDIR]          # default OUTDIR: ./pku-results
#   PYTHONS="python3.11 /opt/py313/bin/python3" bash benchmarks/pku-device.sh out
#   bash benchmarks/pku-device.sh --dry-run out     # say what would run, run nothing
#   bash benchmarks/pku-device.sh --quick out       # a few seconds per CPython (a smoke run)
#
# For each CPython (PYTHONS, else python3.11 to python3.15 on PATH, else those
# that pyenv has) it makes a virtual environment under OUTDIR/venvs, installs pkeyguard and
# pkeyguard-bench (with matplotlib when it can), checks that pkeyguard picked the pku
# backend, and writes OUTDIR/pku-<cpu>-cpython<X.Y>.{txt,json,png}: the table, the raw JSON
# and the plot, named as benchmarks/results/ names its files.  The run includes the virtual
# keys (issue 11) on real keys: a hit against a pinned key, a miss (pkey_mprotect re-tag) per
# region size, working sets of 1 to 1000 keys with the pool's counters, and the simulated
# pool's cases next to them; it prints their summaries and the goals.  OUTDIR/machine.txt
# records the machine (lscpu, kernel, `python -m pkeyguard info`).  Copy the files into
# benchmarks/results/ and the table into benchmarks/README.md.
#
# Exit status: 0 when every CPython was measured on the pku backend; 3 when pkeyguard does
# not pick pku here (nothing is measured; PKEYGUARD_BENCH_ALLOW_MPROTECT=1 measures anyway,
# for a rehearsal on a machine without PKU); 2 for a usage error or when no CPython >= 3.11
# is found; otherwise the status of the step that failed.  `pip install` needs the package
# index (or PIP_FIND_LINKS / PIP_INDEX_URL pointing at a wheelhouse with setuptools).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
MODE=()
OUT=""
for arg in "$@"; do
    case "$arg" in
    --dry-run) DRY=1 ;;
    --quick) MODE=(--quick) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "pku-device.sh: unknown option $arg" >&2
        exit 2
        ;;
    *) OUT=$arg ;;
    esac
done
OUT=$(realpath -m "${OUT:-pku-results}")

# -- which CPythons -------------------------------------------------------------------------
candidates=()
if [[ -n "${PYTHONS:-}" ]]; then
    read -r -a candidates <<<"$PYTHONS"
else
    for v in 3.11 3.12 3.13 3.14 3.15; do
        found=""
        if command -v "python$v" >/dev/null && "python$v" -c '' 2>/dev/null; then
            found=$(command -v "python$v") # (a pyenv shim of a version not selected fails)
        elif command -v pyenv >/dev/null; then
            found=$(ls -d "$(pyenv root)"/versions/"$v".*/bin/python 2>/dev/null | sort -V | tail -1)
        fi
        if [[ -n "$found" ]]; then candidates+=("$found"); fi
    done
fi
pythons=()
for py in "${candidates[@]}"; do
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        pythons+=("$py")
    else
        echo "pku-device.sh: skipping $py (not a CPython >= 3.11)" >&2
    fi
done
if [[ ${#pythons[@]} -eq 0 ]]; then
    echo "pku-device.sh: no CPython >= 3.11 found (set PYTHONS)" >&2
    exit 2
fi

cpu=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
cpu_slug=$(echo "${cpu:-unknown}" | tr 'A-Z' 'a-z' | sed 's/([^)]*)//g; s/[^a-z0-9]\+/-/g; s/^-//; s/-$//' | cut -c1-40)
cpu_slug=${cpu_slug:-unknown}

echo "pku-device.sh: machine '${cpu:-unknown}' ($(nproc) CPUs), output in $OUT"
echo "  every case, virtual keys included (vkey.hit_pku, vkey.miss_pku, vkey.ws_*_pku)"
for py in "${pythons[@]}"; do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    stem="$OUT/pku-$cpu_slug-cpython$ver"
    echo "  cpython$ver: $py -> $stem.{txt,json,png}"
done
if [[ $DRY -eq 1 ]]; then
    exit 0
fi

mkdir -p "$OUT/venvs"
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    uname -a
    command -v lscpu >/dev/null && lscpu || grep -m1 '^model name' /proc/cpuinfo
    echo "cpu flags: $(grep -o -w 'pku\|ospke' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)"
} >"$OUT/machine.txt"

status=0
for py in "${pythons[@]}"; do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv="$OUT/venvs/cpython$ver"
    stem="$OUT/pku-$cpu_slug-cpython$ver"
    echo "=== cpython$ver: build"
    "$py" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$ROOT" "$ROOT/benchmarks"
    plot=()
    if "$venv/bin/python" -m pip install -q 'matplotlib>=3.7'; then
        plot=(--plot "$stem.png")
    else
        echo "pku-device.sh: no matplotlib for cpython$ver: no plot" >&2
    fi
    # Run from outside the source tree, so that the installed packages are the ones imported.
    backend=$(cd "$OUT" && "$venv/bin/python" -c 'import pkeyguard; print(pkeyguard.backend().name)')
    (cd "$OUT" && "$venv/bin/python" -m pkeyguard info) >>"$OUT/machine.txt" 2>&1 || true
    if [[ "$backend" != pku && -z "${PKEYGUARD_BENCH_ALLOW_MPROTECT:-}" ]]; then
        echo "pku-device.sh: pkeyguard picked '$backend' here, not pku; see $OUT/machine.txt" >&2
        exit 3
    fi
    echo "=== cpython$ver: benchmark ($backend backend)"
    if (cd "$OUT" && "$venv/bin/python" -m pkeyguard_bench "${MODE[@]}" --json "$stem.json" \
        "${plot[@]}") >"$stem.txt"; then
        sed -n '/^## \(virtual keys: \|goals\)/,$p' "$stem.txt"
    else
        rc=$?
        echo "pku-device.sh: the benchmark failed on cpython$ver (status $rc); see $stem.txt" >&2
        status=$rc
    fi
done
exit $status
