"""Calling code that must not reach protected memory.

``with pkeyguard.isolated():`` closes every key the process owns through pkeyguard (all but
``allow``) for the calling thread, for the length of the block, and reopens exactly what it
closed when the block ends, also when it raises.  Native code called inside — a ctypes or
cffi parser, a plugin — that reads a protected region dies with ``SEGV_PKUERR`` instead of
reading it (see :mod:`pkeyguard.faults` for a report that names the region).

Entering and leaving are each one C call over the core's own list of open keys, so keys
that other threads create or close meanwhile cannot disturb it, and an exception raised by a
signal handler cannot leave the thread half isolated.

On the ``pku`` backend this is per thread: other threads keep their rights.  On the
``mprotect`` backend it is process-wide like every switch there, and a key that another
thread holds open through a guard stays open (rights are the union of all threads').
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import ParamSpec, TypeVar

from . import _core
from ._errors import ArgumentTypeError
from .pkey import PkeyGuard

__all__ = ["isolate", "isolated"]

P = ParamSpec("P")
R = TypeVar("R")


def isolated(*, allow: Iterable[PkeyGuard] = ()) -> AbstractContextManager[tuple[PkeyGuard, ...]]:
    """Revoke this thread's access to every pkeyguard key but ``allow`` inside the block.

    The block's value is the keys that were closed, except keys the library owns on your
    behalf (each Secret's): those are closed too, but never handed out.  Guards entered inside
    the block work as usual and nest within it.  Keys created inside the block are not
    affected.
    """
    if isinstance(allow, PkeyGuard) or allow is None:
        raise ArgumentTypeError(
            f"allow= takes an iterable of PkeyGuard objects (allow=[key]), not {allow!r}"
        )
    try:
        keys = iter(allow)
    except TypeError:
        raise ArgumentTypeError(
            f"allow= takes an iterable of PkeyGuard objects, not {type(allow).__name__}"
        ) from None
    allowed = tuple(keys)
    for key in allowed:
        if type(key) is not PkeyGuard:
            raise ArgumentTypeError(f"allow= takes PkeyGuard objects, not {key!r}")
    group: AbstractContextManager[tuple[PkeyGuard, ...]] = _core.isolation(allowed)
    return group


def isolate(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``fn(*args, **kwargs)`` inside :func:`isolated` (no allow-list)."""
    with isolated():
        return fn(*args, **kwargs)
