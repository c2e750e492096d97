#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then
#   1. lint and types: ruff, mypy --strict, basedpyright;
#   2. the C core under ASan+UBSan, then the unit suite (mprotect backend, this machine);
#   3. the hardware suite (pku backend forced) inside a QEMU guest whose CPU has PKU;
#   4. the benchmark in --quick mode (must run and print; no timing assertion).
# Any failure, or a guest without PKU, fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# The real interpreter, not a pyenv shim: the shim costs seconds per call in the guest.
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
step() { printf '\n=== %s\n' "$*"; }

step "install pkeyguard and its test tools"
"$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e ".[test,lint]"

step "ruff"
"$PY" -m ruff check src tests benchmarks examples
"$PY" -m ruff format --check src tests benchmarks examples
step "mypy --strict"
"$PY" -m mypy --strict src tests benchmarks examples
step "basedpyright"
"$PY" -m basedpyright src tests benchmarks examples

step "sanitizers (ASan + UBSan build of the C core, unit suite and state machine)"
PYTHON="$PY" bash tools/sanitize.sh

step "unit suite (this machine)"
"$PY" -m pytest -p no:cacheprovider tests/unit

step "hardware suite (QEMU guest with PKU, pku backend forced)"
"$PY" -m pkeyguard.vm --timeout 1200 -- \
    "$PY" -m pytest -p no:cacheprovider --color=no -rA tests/hw

step "benchmark (quick)"
"$PY" -m pkeyguard bench --quick
