"""Where region memory comes from.

The memory of a region is mapped, owned and released by pkeyguard's core, so that it is
released exactly once and never while tagged with a key or in use by a guard.  An allocator
says how it is mapped: :class:`Mmap` (plain anonymous pages, the default) or :class:`Secure`
(memory for secrets).  They are the library's own: a region cannot be placed in memory that
pkeyguard did not map.
"""

from __future__ import annotations

import abc
import atexit
import errno
import resource
from collections.abc import Callable
from typing import Any

from . import _core
from ._errors import ArgumentTypeError, CanaryError, MprotectError

__all__ = [
    "PAGE_SIZE",
    "Allocator",
    "CanaryError",
    "Mmap",
    "Secure",
    "round_to_pages",
]

PAGE_SIZE: int = _core.PAGE_SIZE

#: The largest canary a secure region carries after its value.
MAX_CANARY = 64

_RLIMIT_HINT = "raise it with `ulimit -l` (or LimitMEMLOCK= in systemd), or pass lock=False"


def round_to_pages(size: int) -> int:
    """``size`` rounded up to a whole number of pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class Allocator(abc.ABC):
    """How a region's memory is mapped (the library's allocators only)."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__module__.startswith("pkeyguard"):
            raise TypeError(
                "pkeyguard allocators cannot be subclassed: the library maps, owns and "
                "releases the memory it protects. Use allocator.Mmap() or allocator.Secure()"
            )

    @abc.abstractmethod
    def _options(self) -> dict[str, Any]:
        """Keyword arguments for the core's mapping: guard pages, locking, wiping."""

    def _explain(self, exc: MprotectError) -> MprotectError:
        """A clearer error for a failed mapping (the default: unchanged)."""
        return exc


class Mmap(Allocator):
    """Private anonymous ``mmap``: zero-filled pages, unmapped with ``munmap``."""

    __slots__ = ()

    def _options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "allocator.Mmap()"


class Secure(Allocator):
    """Memory for secrets, in the manner of libsodium's ``sodium_malloc``.

    - an inaccessible guard page before and after the usable pages (an overrun or underrun
      by a page faults at once);
    - the pages are ``mlock``-ed (never swapped), ``MADV_DONTDUMP`` (left out of core
      dumps) and ``MADV_WIPEONFORK`` (a forked child sees zeros), where the kernel has them;
    - a random canary right after the value is checked on release: a small overflow raises
      :class:`CanaryError` instead of passing silently;
    - the pages are zeroed before they are unmapped, whoever releases them (``close()``, the
      garbage collector); at interpreter exit, secure regions still open are zeroed.

    ``on_before_unmap(address, length)`` is a test hook called after zeroing.
    """

    __slots__ = ("canary_size", "lock", "on_before_unmap")

    def __init__(
        self,
        *,
        lock: bool = True,
        canary_size: int = 16,
        on_before_unmap: Callable[[int, int], None] | None = None,
    ) -> None:
        if isinstance(canary_size, bool) or not isinstance(canary_size, int):
            raise ArgumentTypeError(f"canary_size must be an int, not {canary_size!r}")
        canary_size = int(canary_size)
        if not 0 <= canary_size <= MAX_CANARY:
            raise ValueError(f"canary_size must be within 0..{MAX_CANARY}, got {canary_size}")
        if on_before_unmap is not None and not callable(on_before_unmap):
            raise ArgumentTypeError("on_before_unmap must be callable")
        self.lock = bool(lock)
        self.canary_size = canary_size
        self.on_before_unmap = on_before_unmap

    def _options(self) -> dict[str, Any]:
        return {
            "guard_pages": True,
            "lock": self.lock,
            "dontdump": True,
            "wipeonfork": True,
            "canary_size": self.canary_size,
            "wipe": True,
            "on_release": self.on_before_unmap,
        }

    def _explain(self, exc: MprotectError) -> MprotectError:
        if exc.syscall != "mlock" or exc.errno not in (errno.ENOMEM, errno.EPERM, errno.EAGAIN):
            return exc
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        err = MprotectError(
            exc.errno,
            "cannot mlock a secure region: RLIMIT_MEMLOCK is "
            f"{limit} and locked memory counts against it; {_RLIMIT_HINT}",
        )
        err.syscall = "mlock"
        return err

    def __repr__(self) -> str:
        return f"allocator.Secure(lock={self.lock}, canary_size={self.canary_size})"


# Secure regions still open when the interpreter exits are zeroed (not unmapped: a daemon
# thread may still be reading one).
atexit.register(_core.wipe_at_exit)
