"""Child-side helpers for attacks written as modules (``tests/adversarial/children``).

The typed twin of the string prelude in :mod:`tests.adversarial.support`: a child module
imports what it needs from here, and :func:`tests.adversarial.support.run_case` runs one of
its ``case_*`` functions in a fresh interpreter (``python -m tests.adversarial.run_case``),
after arming the same hang watchdog and before printing the same marker.  Unlike a snippet,
a child module is code ruff, mypy and basedpyright read.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pkeyguard
from pkeyguard import PkeyguardError, PkeyPermissions, _core, allocator
from pkeyguard.pkey import AccessGuard
from tests.support import anon_mappings, new_anon_mappings

if TYPE_CHECKING:
    from hypothesis import settings

__all__ = [
    "LEVEL",
    "MPROTECT",
    "NA",
    "PAGE",
    "RO",
    "RW",
    "Snapshot",
    "assert_clean",
    "exit_all",
    "hunt_settings",
    "params",
    "raises",
    "snapshot",
    "wait_until",
]

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess
LEVEL = {NA: 0, RO: 1, RW: 2}
MPROTECT = pkeyguard.backend().name == "mprotect"
PAGE = allocator.PAGE_SIZE

Mapping = tuple[int, int, str]
Snapshot = tuple[set[Mapping], int]
E = TypeVar("E", bound=BaseException)


def params() -> dict[str, Any]:
    """The parameters :func:`tests.adversarial.support.run_case` passed (JSON)."""
    raw = os.environ.get("PKEYGUARD_CASE_PARAMS", "{}")
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


def warm_threads() -> None:
    """Start and join a few threads, so later threads reuse cached stacks (not a leak)."""
    ts = [threading.Thread(target=lambda: None) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    time.sleep(0.05)


def snapshot() -> Snapshot:
    warm_threads()
    for _ in range(2):
        gc.collect()
    return (anon_mappings(), _core.live_key_count())


def leaked_mappings(before: set[Mapping]) -> list[Mapping]:
    now = anon_mappings()
    stacks = {m[0] for m in now if m[2] == "rw-p" and m[1] - m[0] >= 1 << 20}
    return sorted(
        m
        for m in new_anon_mappings(before, now)
        if not (m[2] == "rw-p" and m[1] - m[0] >= 1 << 18)
        and not (m[2] == "---p" and m[1] - m[0] == PAGE and m[1] in stacks)
    )


def assert_clean(snap: Snapshot, label: str = "") -> None:
    """No guard left on this thread, no key and no mapping leaked since ``snap``."""
    for _ in range(3):
        gc.collect()
    guards = _core.thread_guards()
    assert guards == [], f"{label}: guards left active on this thread: {guards!r}"
    keys = _core.live_key_count()
    assert keys == snap[1], f"{label}: live keys {keys}, expected {snap[1]} (a key leaked)"
    leaked = leaked_mappings(snap[0])
    assert not leaked, f"{label}: mappings left behind: {leaked}"


def raises(
    kinds: type[E] | tuple[type[E], ...], fn: Callable[..., object], *args: Any, **kwargs: Any
) -> E:
    """The exception ``fn(*args, **kwargs)`` raised, or AssertionError naming what happened
    instead."""
    try:
        fn(*args, **kwargs)
    except kinds as exc:
        return exc
    except BaseException as exc:
        raise AssertionError(
            f"expected {kinds}, got {type(exc).__module__}.{type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"expected {kinds}, but nothing was raised")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def exit_all(stack: list[AccessGuard[Any]]) -> None:
    """Leave every guard of ``stack`` (entry order) that is still active, innermost first."""
    while stack:
        g = stack.pop()
        if g.active:
            with contextlib.suppress(PkeyguardError):
                g.__exit__(None, None, None)


def hunt_settings() -> settings:
    """The settings of a hypothesis hunt run in the child: ``params()["examples"]`` examples,
    no deadline, no database, no shrinking (a failing example is printed as it is; set
    PKEYGUARD_ADVERSARIAL_SHRINK=1 to shrink it, which is slow under gc threshold 1)."""
    from hypothesis import HealthCheck, Phase, settings  # only the hunts need hypothesis

    phases = (
        tuple(Phase)
        if os.environ.get("PKEYGUARD_ADVERSARIAL_SHRINK")
        else (Phase.explicit, Phase.reuse, Phase.generate)
    )
    return settings(
        max_examples=int(params()["examples"]),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck.__members__.values()),
        phases=phases,
    )


def room_to_lock(nbytes: int) -> None:
    """Raise this process's ``RLIMIT_MEMLOCK`` to at least ``nbytes`` where it may (root).
    A case that makes large secrets needs it on kernels that charge secret memory against the
    limit even with ``CAP_IPC_LOCK`` (Debian's 6.1.0-57 does, per user): there pkeyguard
    refuses such a secret at creation, as it should, and the case would test nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= nbytes:
        return
    new_hard = hard if hard == infinite or hard >= nbytes else nbytes
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (nbytes, new_hard))


def fork_status(check: Callable[[], None]) -> int:
    """Run ``check`` in a fork child; its wait status (exit 1 with the traceback on stderr
    if ``check`` raised)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            check()
        except BaseException:  # reported through the exit code
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status
