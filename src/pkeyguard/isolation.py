"""Calling code that must not reach protected memory.

``with pkeyguard.isolated():`` closes every key the process owns through pkeyguard (all but
``allow``) for the calling thread, for the length of the block, and reopens exactly what it
closed when the block ends, also when it raises.  Native code called inside — a ctypes or
cffi parser, a plugin — that reads a protected region dies with ``SEGV_PKUERR`` instead of
reading it (see :mod:`pkeyguard.faults` for a report that names the region).

On the ``pku`` backend this is per thread: other threads keep their rights.  On the
``mprotect`` backend it is process-wide like every switch there, and a key that another
thread holds open through a guard stays open (rights are the union of all threads').
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import ParamSpec, TypeVar

from . import _core
from ._errors import PkeyGuardError
from .pkey import PkeyGuard, live_keys

__all__ = ["isolate", "isolated"]

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def isolated(*, allow: Iterable[PkeyGuard] = ()) -> Iterator[list[PkeyGuard]]:
    """Revoke this thread's access to every pkeyguard key but ``allow`` inside the block.

    Yields the keys that were closed.  Guards entered inside the block work as usual and
    nest within it.
    """
    allowed = list(allow)
    for key in allowed:
        if not isinstance(key, PkeyGuard):
            raise PkeyGuardError(f"allow= takes PkeyGuard objects, not {key!r}")
    keep = {id(k) for k in allowed}
    keys = [k for k in live_keys() if id(k) not in keep]
    with contextlib.ExitStack() as stack:
        for key in keys:
            # A NoAccess guard per key: same LIFO and per-thread rules as any guard.
            stack.enter_context(_core.Guard(key._core, 0, None))
        yield keys


def isolate(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``fn(*args, **kwargs)`` inside :func:`isolated` (no allow-list)."""
    with isolated():
        return fn(*args, **kwargs)
