"""Helpers of the adversarial suite: run an attack in a fresh interpreter, judge how it ended.

Every attack is a Python snippet run by :func:`attack` in a child process, after a prelude
that imports pkeyguard, arms a hang watchdog (``faulthandler.dump_traceback_later``: a hang
ends the child with status 1 and every thread's traceback), and defines accounting helpers
the snippets share:

- ``live_key_count()``: keys the library holds (``_core.live_key_count()`` where the core has
  it, else the backend's counter);
- ``snapshot()`` / ``assert_clean(snap, label)``: no guard left on this thread, the key
  count back to the snapshot, and no new anonymous mapping (glibc heaps and rw-p blocks of
  256 KiB or more, the allocator's arenas, do not count; as tests/unit's ``no_leaks``);
- ``secret_address(s)``: ``s.address``, or ``s.region.address`` on the old API;
- ``raises(kinds, fn, *args)``: the exception, or AssertionError naming what happened;
- ``wait_until(predicate, timeout)``, ``exit_all(stack)``.

A snippet that reaches its end prints :data:`MARKER`; :func:`assert_survived` wants exit
status 0 and the marker, so death by a signal, a hang, or an assertion in the child fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping

import pytest

from pkeyguard import _core
from tests.failinject import preload_env as failinject_env
from tests.support import Child, run_child

__all__ = [
    "MARKER",
    "REPO_ROOT",
    "SECRET_BACKINGS",
    "assert_died_with",
    "assert_survived",
    "attack",
    "describe",
    "run_case",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MARKER = "ADVERSARIAL-OK"

#: Both backings of secret memory, as a parameter list: memfd_secret skips on a kernel without
#: it (the mmap case still runs).
SECRET_BACKINGS = [
    pytest.param(
        "memfd_secret",
        marks=pytest.mark.skipif(
            _core.memfd_secret_errno() != 0, reason="this kernel has no memfd_secret"
        ),
    ),
    "mmap",
]

_PRELUDE = """\
import sys, os
sys.path.insert(0, {root!r})
os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")
import faulthandler
if {fault_handler!r}:
    faulthandler.enable(all_threads=True)
faulthandler.dump_traceback_later({watchdog!r}, exit=True)
import ctypes, gc, threading, time, warnings
import pkeyguard
from pkeyguard import (
    AccessError, AccessPermissions, GuardError, GuardOrderError, GuardStateError,
    GuardThreadError, PkeyGuard, KeyStateError, PkeyPermissions, PkeyguardError,
    RegionError, RegionGuard, RegionTypeError, Secret, ViewError, allocator, isolated,
)
from pkeyguard import _core
from tests.support import anon_mappings, new_anon_mappings, perms_at

PARAMS = {params!r}
RW = PkeyPermissions.ReadWrite
RO = PkeyPermissions.ReadOnly
NA = PkeyPermissions.NoAccess
LEVEL = {{NA: 0, RO: 1, RW: 2}}
MPROTECT = pkeyguard.backend().name == "mprotect"
PAGE = allocator.PAGE_SIZE


def live_key_count():
    count = getattr(_core, "live_key_count", None)
    if count is not None:
        return count()
    from pkeyguard import _backend
    return _backend.active()[1].live_keys()


def secret_address(secret):
    address = getattr(secret, "address", None)
    if address is None:
        address = secret.region.address
    return address


def warm_threads():
    # glibc keeps the stacks of finished threads for reuse: start some once, so that
    # later threads reuse them instead of looking like leaked mappings.  A stack is
    # reusable only once its thread is fully gone, a moment after join() returns.
    ts = [threading.Thread(target=lambda: None) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    time.sleep(0.05)


def snapshot():
    warm_threads()
    for _ in range(2):
        gc.collect()
    return (anon_mappings(), live_key_count())


def leaked_mappings(before):
    now = anon_mappings()
    # A thread stack glibc had to map anew (its cache missed): a one-page PROT_NONE guard
    # right below a large rw-p stack.  Not ours.
    stacks = {{m[0] for m in now if m[2] == "rw-p" and m[1] - m[0] >= 1 << 20}}
    return sorted(
        m for m in new_anon_mappings(before, now)
        if not (m[2] == "rw-p" and m[1] - m[0] >= 1 << 18)
        and not (m[2] == "---p" and m[1] - m[0] == PAGE and m[1] in stacks)
    )


def assert_clean(snap, label=""):
    for _ in range(3):
        gc.collect()
    guards = _core.thread_guards()
    assert guards == [], f"{{label}}: guards left active on this thread: {{guards!r}}"
    keys = live_key_count()
    assert keys == snap[1], f"{{label}}: live keys {{keys}}, expected {{snap[1]}} (a key leaked)"
    leaked = leaked_mappings(snap[0])
    assert not leaked, f"{{label}}: mappings left behind: {{leaked}}"


def raises(kinds, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kinds as exc:
        return exc
    except BaseException as exc:
        raise AssertionError(
            f"expected {{kinds}}, got {{type(exc).__module__}}.{{type(exc).__name__}}: {{exc}}"
        ) from exc
    raise AssertionError(f"expected {{kinds}}, but nothing was raised")


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def exit_all(stack):
    # Leave every guard of ``stack`` (entry order) that is still active, innermost first.
    while stack:
        g = stack.pop()
        if getattr(g, "active", False):
            try:
                g.__exit__(None, None, None)
            except PkeyguardError:
                pass

"""

_EPILOGUE = f"""
print({MARKER!r}, flush=True)
"""


def attack(
    body: str,
    *,
    params: Mapping[str, object] | None = None,
    timeout: float = 120,
    watchdog: float = 60,
    fault_handler: bool = True,
    marker: bool = True,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Run ``body`` after the prelude in a fresh interpreter; print the marker at its end.

    ``watchdog`` seconds after the start, a still-running child dumps every thread's
    traceback and exits with status 1 (a hang fails with a diagnosis); ``timeout`` is the
    backstop after which subprocess.TimeoutExpired propagates.
    """
    code = _PRELUDE.format(
        root=REPO_ROOT,
        fault_handler=fault_handler,
        watchdog=float(watchdog),
        params=dict(params or {}),
    )
    code += textwrap.dedent(body)
    if marker:
        code += _EPILOGUE
    full_env = {"PKEYGUARD_BACKEND": os.environ.get("PKEYGUARD_BACKEND", "mprotect")}
    if env:
        full_env.update(env)
    return run_child(code, env=full_env, timeout=timeout)


def run_case(
    module: str,
    case: str,
    *,
    params: Mapping[str, object] | None = None,
    timeout: float = 120,
    watchdog: float = 60,
    fault_handler: bool = True,
    failinject: bool = False,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Run ``case`` (a ``case_*`` function of ``tests.adversarial.children.<module>``, or of
    ``module`` itself when it is a dotted name such as ``tests.unit.children.fork``) in a
    fresh interpreter; like :func:`attack`, but the child program is a module the linters
    and type checkers read.  ``params`` reach the child as JSON (``childlib.params()``);
    ``failinject`` preloads the system-call failure shim (:mod:`tests.failinject`)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONFAULTHANDLER", None)
    full_env["PKEYGUARD_BACKEND"] = os.environ.get("PKEYGUARD_BACKEND", "mprotect")
    full_env["PKEYGUARD_CASE_PARAMS"] = json.dumps(dict(params or {}))
    full_env["PKEYGUARD_CASE_WATCHDOG"] = str(float(watchdog))
    full_env["PKEYGUARD_CASE_FAULTHANDLER"] = "1" if fault_handler else "0"
    # The child finds the tests package from the repository root, and pkeyguard the way this
    # process did (the installed package, or the one PYTHONPATH points at).
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO_ROOT, full_env.get("PYTHONPATH", "")) if p
    )
    if failinject:
        full_env = failinject_env(full_env)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.run_case", module, case],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    return Child(proc.returncode, proc.stdout, proc.stderr)


def describe(child: Child) -> str:
    """How the child ended, with the tails of its output, for assertion messages."""
    rc = child.returncode
    if rc < 0:
        try:
            how = f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    else:
        how = f"exit status {rc}"
    return (
        f"child {how}\n--- stdout (tail) ---\n{child.stdout[-3000:]}"
        f"\n--- stderr (tail) ---\n{child.stderr[-8000:]}"
    )


def assert_survived(child: Child, *, quiet: bool = False) -> None:
    """The attack ran to its end: exit status 0 and the marker on stdout.

    ``quiet``: also no traceback on stderr (no "Exception ignored in" from a finalizer,
    no error printed at interpreter exit).
    """
    assert child.returncode == 0 and MARKER in child.stdout, describe(child)
    if quiet:
        for needle in ("Traceback", "Exception ignored"):
            assert needle not in child.stderr, f"{needle!r} on stderr\n" + describe(child)


def assert_died_with(child: Child, sig: int, *needles: str) -> None:
    """The child was killed by ``sig`` and its stderr holds every needle."""
    assert child.returncode == -sig, describe(child)
    for needle in needles:
        assert needle in child.stderr, f"{needle!r} missing from stderr\n" + describe(child)


#: Child-side hypothesis set-up for the hunts: ``@SETTINGS`` runs ``PARAMS["examples"]``
#: examples, no deadline, no database, no shrinking (a failing example is printed as it is;
#: set PKEYGUARD_ADVERSARIAL_SHRINK=1 to shrink it, which is slow under gc threshold 1).
HYPOTHESIS = """
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

SETTINGS = settings(
    max_examples=PARAMS["examples"],
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=tuple(Phase) if os.environ.get("PKEYGUARD_ADVERSARIAL_SHRINK")
    else (Phase.explicit, Phase.reuse, Phase.generate),
)
"""
