"""Helpers of the adversarial suite: run an attack in a fresh interpreter, judge how it ended.

An attack is a ``case_*`` function of a module under ``tests/adversarial/children`` (or any
importable module), run by :func:`run_case` in a child process (``python -m
tests.adversarial.run_case``): the child arms a hang watchdog (``faulthandler``'s
``dump_traceback_later``: a hang ends it with status 1 and every thread's traceback), runs the
case, and prints :data:`MARKER` when the case returns.  The helpers cases share are in
:mod:`tests.adversarial.childlib`; parameters reach the child as JSON.

:func:`assert_survived` wants exit status 0 and the marker, so death by a signal, a hang, or an
assertion in the child fails; :func:`assert_died_with` wants death by a given signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

import pytest

from pkeyguard import _core
from tests.adversarial.run_case import MARKER
from tests.failinject import preload_env as failinject_env
from tests.support import Child

__all__ = [
    "MARKER",
    "REPO_ROOT",
    "SECRET_BACKINGS",
    "assert_died_with",
    "assert_survived",
    "describe",
    "run_case",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    fresh interpreter (a module the linters and type checkers read, never a string).
    ``params`` reach the child as JSON (``childlib.params()``);
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
