#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then
#   1. lint and types: ruff, mypy --strict, basedpyright;
#   2. the C core under ASan+UBSan: the unit and adversarial suites;
#   3. the unit suite and the adversarial suite (mprotect backend, this machine);
#   4. the hardware suite and the adversarial classes that depend on the backend (pku backend
#      forced) inside a QEMU guest whose CPU has PKU;
#   5. the benchmark in --quick mode (must run and print; no timing assertion).
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

step "sanitizers (ASan + UBSan build of the C core: unit suite, state machine, adversarial suite)"
PYTHON="$PY" bash tools/sanitize.sh

step "unit suite (this machine)"
"$PY" -m pytest -p no:cacheprovider tests/unit

step "adversarial suite (this machine: every attack in a child process)"
"$PY" -m pytest -p no:cacheprovider tests/adversarial

step "hardware suite and the pku-relevant attacks (QEMU guest with PKU, pku backend forced)"
# Classes 1, 3, 4 and 7 of the adversarial suite depend on how rights are switched and
# memory is released, so they run on pku too; the others are backend-independent.
PKEYGUARD_BACKEND=pku "$PY" -m pkeyguard.vm --timeout 1500 -- \
    "$PY" -m pytest -p no:cacheprovider --color=no -rA tests/hw \
    tests/adversarial/test_c01_view_conversions.py tests/adversarial/test_c03_thread_end_and_fork.py \
    tests/adversarial/test_c04_buffer_exports.py tests/adversarial/test_c07_finalizers.py

step "benchmark (quick)"
"$PY" -m pkeyguard bench --quick
