"""Where region memory comes from.

An allocator hands out page-aligned, page-rounded anonymous memory and takes it back.
:class:`Mmap` is the default; more (a secure allocator with guard pages) plug in through
the same interface.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from . import _core
from ._errors import MprotectError, PkeyguardError
from ._permissions import AccessPermissions

__all__ = [
    "PAGE_SIZE",
    "Allocation",
    "Allocator",
    "CanaryError",
    "Mmap",
    "Secure",
    "SecureAllocation",
    "round_to_pages",
]

PAGE_SIZE: int = _core.PAGE_SIZE


def round_to_pages(size: int) -> int:
    """``size`` rounded up to a whole number of pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@dataclass(frozen=True)
class Allocation:
    """A block of pages: ``address`` and ``length`` are what a key tags and guards switch."""

    address: int
    length: int


class Allocator(abc.ABC):
    """Interface for region memory."""

    @abc.abstractmethod
    def allocate(self, size: int, access: AccessPermissions) -> Allocation:
        """Map at least ``size`` bytes, page-aligned, with page rights ``access``."""

    @abc.abstractmethod
    def release(self, allocation: Allocation) -> None:
        """Give the pages back; called exactly once per allocation."""


class Mmap(Allocator):
    """Private anonymous ``mmap``: zero-filled pages, unmapped with ``munmap``."""

    def allocate(self, size: int, access: AccessPermissions) -> Allocation:
        length = round_to_pages(size)
        address = _core.mmap_anon(length, int(access))
        return Allocation(address, length)

    def release(self, allocation: Allocation) -> None:
        _core.munmap(allocation.address, allocation.length)

    def __repr__(self) -> str:
        return "allocator.Mmap()"


# --- the secure allocator -------------------------------------------------------------

_MADV_DONTDUMP = 16
_MADV_WIPEONFORK = 18
_RLIMIT_HINT = "raise it with `ulimit -l` (or LimitMEMLOCK= in systemd), or pass lock=False"


@dataclass(frozen=True)
class SecureAllocation(Allocation):
    """A secure block: ``address``/``length`` are the usable pages between the guards."""

    base: int
    total: int
    canary: bytes
    size: int
    locked: bool
    advice: tuple[str, ...]


class CanaryError(PkeyguardError, RuntimeError):
    """The bytes after a secure region's value were overwritten (a buffer overflow)."""


class Secure(Allocator):
    """Memory for secrets, in the manner of libsodium's ``sodium_malloc``.

    - an inaccessible guard page before and after the usable pages (an overrun or underrun
      by a page faults at once);
    - the pages are ``mlock``-ed (never swapped), ``MADV_DONTDUMP`` (left out of core
      dumps) and ``MADV_WIPEONFORK`` (a forked child sees zeros), where the kernel has them;
    - a random canary right after the value is checked on release: a small overflow raises
      :class:`CanaryError` instead of passing silently;
    - the pages are zeroed before they are unmapped.

    ``on_before_unmap(address, length)`` is a test hook called after zeroing.
    """

    def __init__(
        self,
        *,
        lock: bool = True,
        canary_size: int = 16,
        on_before_unmap: Callable[[int, int], None] | None = None,
    ) -> None:
        if canary_size < 0 or canary_size > PAGE_SIZE:
            raise ValueError(f"canary_size must be within 0..{PAGE_SIZE}, got {canary_size}")
        self.lock = lock
        self.canary_size = canary_size
        self.on_before_unmap = on_before_unmap

    def allocate(self, size: int, access: AccessPermissions) -> SecureAllocation:
        length = round_to_pages(size + self.canary_size)
        total = length + 2 * PAGE_SIZE
        base = _core.mmap_anon(total, _core.PROT_NONE)
        address = base + PAGE_SIZE
        try:
            _core.mprotect(address, length, _core.PROT_READ | _core.PROT_WRITE)
            advice = []
            for name, value, start, span in (
                ("dontdump", _MADV_DONTDUMP, base, total),
                ("wipeonfork", _MADV_WIPEONFORK, address, length),
            ):
                try:
                    _core.madvise(start, span, value)
                    advice.append(name)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: this kernel lacks the flag
                        raise
            if self.lock:
                self._mlock(address, length)
            canary = os.urandom(self.canary_size)
            ctypes.memmove(address + size, canary, len(canary))
            _core.mprotect(address, length, int(access))
        except BaseException:
            _core.munmap(base, total)
            raise
        return SecureAllocation(
            address, length, base, total, canary, size, self.lock, tuple(advice)
        )

    @staticmethod
    def _mlock(address: int, length: int) -> None:
        try:
            _core.mlock(address, length, True)
        except OSError as exc:
            if exc.errno not in (errno.ENOMEM, errno.EPERM, errno.EAGAIN):
                raise
            soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
            err = MprotectError(
                exc.errno,
                f"cannot mlock {length} bytes for a secure region: RLIMIT_MEMLOCK is {limit} "
                f"and locked memory counts against it; {_RLIMIT_HINT}",
            )
            err.syscall = "mlock"
            raise err from None

    def release(self, allocation: Allocation) -> None:
        if not isinstance(allocation, SecureAllocation):
            raise TypeError("Secure.release() takes what Secure.allocate() returned")
        a = allocation
        # The pages may still carry a key or closed page rights: open them to this thread.
        try:
            _core.pkey_mprotect(a.address, a.length, _core.PROT_READ | _core.PROT_WRITE, 0)
        except OSError:
            _core.mprotect(a.address, a.length, _core.PROT_READ | _core.PROT_WRITE)
        found = ctypes.string_at(a.address + a.size, len(a.canary))
        ctypes.memset(a.address, 0, a.length)
        try:
            if self.on_before_unmap is not None:
                self.on_before_unmap(a.address, a.length)
        finally:
            if a.locked:
                _core.mlock(a.address, a.length, False)
            _core.munmap(a.base, a.total)
        if found != a.canary:
            raise CanaryError(
                f"the canary after a secure region's {a.size}-byte value was overwritten: "
                "something wrote past the end of the value (the memory was wiped and "
                "unmapped anyway)"
            )

    def __repr__(self) -> str:
        return f"allocator.Secure(lock={self.lock}, canary_size={self.canary_size})"
