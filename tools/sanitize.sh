#!/usr/bin/env bash
# The unit suite, the state machine and the adversarial suite with the C core built under
# AddressSanitizer and UndefinedBehaviorSanitizer (PKEYGUARD_SANITIZE=address,undefined, read
# by setup.py), without NDEBUG: the core's assert()s on its invariants are compiled in.
#
# The build happens in a temporary copy of the working tree (tracked and untracked files that
# git does not ignore), so the in-place extension that other runs use is never touched and
# nothing has to be rebuilt afterwards.  Python is not built with ASan, so libasan is
# preloaded.  Every report, from this process or any child it starts, is written under a log
# directory; the run fails if any report exists, whatever the tests said.
#
#   bash tools/sanitize.sh                   # the state machine runs 200 examples here
#   KEEP=1 bash tools/sanitize.sh            # keep the temporary copy (its path is printed)
#   bash tools/sanitize.sh -k state_machine  # extra arguments go to pytest
#
# Not run here: tests/unit/test_typing.py (runs mypy and the pyright engine on Node: nothing of
# the C core runs).  The PKU guest runner's tests live in tools/vm/tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
start=$(date +%s)

CC=${CC:-gcc}
LIBASAN=$("$CC" -print-file-name=libasan.so)
if [[ ! -e "$LIBASAN" ]]; then
    echo "sanitize.sh: $CC has no libasan.so ($LIBASAN); install libasan (gcc's runtime)" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkeyguard-sanitize.XXXXXX")
cleanup() {
    if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
COPY=$WORK/tree
LOGS=$WORK/reports
mkdir -p "$COPY" "$LOGS"

echo "=== copy the working tree to $COPY"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$COPY"

echo "=== build the C extensions with -fsanitize=address,undefined and assertions"
(
    cd "$COPY"
    find src -name '*.so' -delete
    PKEYGUARD_SANITIZE=address,undefined PKEYGUARD_WERROR=1 \
        "$PY" setup.py -q build_ext --inplace --build-temp "$WORK/build" >"$WORK/build.log" 2>&1 \
        || { cat "$WORK/build.log"; exit 1; }
)
# nm's output goes to a file first: `nm | grep -q` under pipefail fails whenever grep stops
# reading at its first match before nm has written everything (SIGPIPE), at random.
# The core's invariants must be checked: an assert() in the build means NDEBUG was off.
if ! grep -aq '__assert_fail' "$COPY"/src/pkeyguard/_core*.so; then
    echo "sanitize.sh: _core was built with NDEBUG: its assert()s are not compiled in" >&2
    exit 1
fi
for so in "$COPY"/src/pkeyguard/*.so; do
    nm -D "$so" >"$WORK/symbols.txt"
    if ! grep -q '__asan_' "$WORK/symbols.txt"; then
        echo "sanitize.sh: $so is not instrumented" >&2
        exit 1
    fi
done

# ASan's runtime intercepts mlock()/munlock() and makes them no-ops; the core calls them
# through syscall(2), so the secret tests that check locking run here too.  Say so plainly
# if that ever changes, rather than let those tests fail on VmLck.
nm -D "$COPY"/src/pkeyguard/_core*.so >"$WORK/symbols.txt"
if grep -Eq ' U (mlock|munlock)(@|$)' "$WORK/symbols.txt"; then
    echo "sanitize.sh: _core calls mlock/munlock through libc, which ASan makes no-ops;" \
        "call them through syscall(2)" >&2
    exit 1
fi

echo "=== unit suite and state machine under ASan + UBSan"
# handle_segv=0: tests that fault on purpose (in child processes) must die of SIGSEGV, as
# they do without the sanitizer, and pkeyguard.faults must see the signal, not ASan.
# detect_leaks=0: CPython keeps memory until exit on purpose.
# PYTHONMALLOC=malloc: every Python object goes through ASan's allocator too.
set +e
(
    cd "$COPY"
    export LD_PRELOAD=$LIBASAN
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:handle_segv=0:allow_user_segv_handler=1:log_path=$LOGS/asan"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan"
    export PYTHONMALLOC=malloc
    export PYTHONPATH=$COPY/src${PYTHONPATH:+:$PYTHONPATH}
    export PKEYGUARD_STATE_EXAMPLES=${PKEYGUARD_STATE_EXAMPLES:-200}
    "$PY" -c 'import pkeyguard._core as c, sys; assert c.__file__.startswith(sys.argv[1]), c.__file__' \
        "$COPY/src/" || exit 3
    "$PY" -m pytest -p no:cacheprovider -q tests/unit tests/adversarial \
        --ignore=tests/unit/test_typing.py "$@"
)
status=$?
set -e

shopt -s nullglob
reports=("$LOGS"/*)
if ((${#reports[@]})); then
    echo "=== sanitizer reports: ${#reports[@]} file(s)"
    for r in "${reports[@]}"; do
        echo "--- $r"
        cat "$r"
    done
    status=1
else
    echo "=== no sanitizer reports"
fi
echo "=== sanitize.sh: $(($(date +%s) - start)) s, exit status $status"
exit $status
