#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then
#   1. lint and types: ruff, mypy --strict, basedpyright, stubtest of the C core's stub, and
#      the typing programs (tests/typing) under both checkers;
#   2. the C core under ASan+UBSan: the unit and adversarial suites;
#   3. the packages users install: an sdist and manylinux wheels for CPython 3.11, 3.12, 3.13,
#      3.14 and 3.15, checked (twine, check-wheel-contents, auditwheel show, what they hold: no
#      debug information), each installed into a fresh virtual environment where the unit
#      suite runs against it (tools/wheels.sh; 3.14 and 3.15 in a Debian sid chroot, made once
#      by tools/sid-pythons.sh, about 2 minutes, and cached in ~/.cache/pkeyguard-sid);
#   4. the adversarial suite (mprotect backend, this machine);
#   5. the PKU guest runner (tools/vm) and, through it, the hardware suite and the adversarial
#      classes that depend on the backend (pku backend forced) inside a QEMU guest whose CPU
#      has PKU, on Debian's release kernel (6.1) and its newest (6.12, bookworm-backports);
#   6. the benchmark in --quick mode (must run and print; no timing assertion).
# Any failure, or a guest without PKU, fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# The real interpreter, not a pyenv shim: the shim costs seconds per call in the guest.
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
step() { printf '\n=== %s\n' "$*"; }
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}

step "install pkeyguard (editable), its test tools, the PKU guest runner and the benchmark"
pip_install --upgrade "setuptools>=77" build
pip_install -e ".[test,lint]"
pip_install ./tools/vm ./benchmarks

step "ruff"
"$PY" -m ruff check src tests examples tools/vm benchmarks
"$PY" -m ruff format --check src tests examples tools/vm benchmarks
step "mypy --strict"
"$PY" -m mypy --strict src tests examples tools/vm/src tools/vm/tests
"$PY" -m mypy --strict benchmarks/src benchmarks/tests
step "basedpyright"
"$PY" -m basedpyright src tests examples
"$PY" -m basedpyright -p tools/vm
"$PY" -m basedpyright -p benchmarks
step "stubtest (the C core's stub against the built module)"
"$PY" -m mypy.stubtest pkeyguard._core pkeyguard._terminal --allowlist tools/stubtest-allowlist.txt \
    --ignore-unused-allowlist
step "typing programs (mypy --strict and basedpyright over tests/typing)"
"$PY" -m pytest -p no:cacheprovider -m typing tests/unit

step "sanitizers (ASan + UBSan build of the C core: unit suite, state machine, adversarial suite)"
PYTHON="$PY" bash tools/sanitize.sh

step "wheels: build, check, and the unit suite against each installed wheel (3.11 to 3.15)"
PYTHON="$PY" bash tools/wheels.sh

step "adversarial suite (this machine: every attack in a child process)"
"$PY" -m pytest -p no:cacheprovider tests/adversarial

step "PKU guest runner (tools/vm: host side, and real boots of both kernels)"
"$PY" -m pytest -p no:cacheprovider tools/vm/tests

step "hardware suite and the pku-relevant attacks (QEMU guest with PKU, pku backend forced)"
# The guest runs what is marked pku_guest: tests/hw, and the attacks and unit tests that depend
# on how rights are switched and memory is released, on the kernel, or on secret memory. The
# one list of them, with the reasons, is PKU_GUEST in tests/conftest.py; the others
# are backend-independent and run on this machine only.
# Each kernel is an exact Debian package, pinned in pkeyguard_vm (PINNED_KERNELS); the runner
# prints the one it boots and pytest's header says `uname -r`. PKEYGUARD_FOLLOW_KERNEL=1 boots
# what linux-image-amd64 resolves to today instead (to try a new kernel before moving the pin).
follow=()
[[ ${PKEYGUARD_FOLLOW_KERNEL:-} == 1 ]] && follow=(--follow-kernel)
for kernel in release backports; do
    printf -- '--- kernel: %s%s\n' "$kernel" "${follow[*]:+ (following linux-image-amd64)}"
    # The virtual-key machine's 200 examples run on the newest kernel; 50 on 6.1 keep the
    # step's time in check (the general machine runs its full count on both).
    vk_examples=$([[ $kernel == release ]] && echo 50 || echo "${PKEYGUARD_VK_STATE_EXAMPLES:-}")
    # secretmem.enable=1: memfd_secret is off by default before Linux 6.5 (6.1 says ENOSYS).
    PKEYGUARD_VK_STATE_EXAMPLES=$vk_examples PKEYGUARD_BACKEND=pku "$PY" -m pkeyguard_vm --kernel "$kernel" ${follow[@]+"${follow[@]}"} --timeout 2400 \
        --kernel-arg secretmem.enable=1 -- \
        "$PY" -m pytest -p no:cacheprovider --color=no -rA -m pku_guest \
        tests/hw tests/adversarial tests/unit
done

step "benchmark (quick)"
"$PY" -m pytest -p no:cacheprovider benchmarks/tests
"$PY" -m pkeyguard_bench --quick
