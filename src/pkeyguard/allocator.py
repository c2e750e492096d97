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
import os
import resource
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args

from . import _core
from ._checks import exact_int
from ._errors import ArgumentTypeError, CanaryError, MprotectError, RegionError
from ._owned import refuse_outside_subclass

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

Backing = Literal["auto", "memfd_secret", "mmap"]
_BACKINGS: tuple[str, ...] = get_args(Backing)

#: memfd_secret(2) errors that mean "not here" (not "not now"): ENOSYS where the kernel lacks
#: it or has it switched off (5.14 to 6.4 need ``secretmem.enable=1``), EPERM or ENOSYS from a
#: seccomp filter (container runtimes), EINVAL/EOPNOTSUPP from an architecture without it.
_SECRETMEM_MISSING = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP})
_SECRETMEM_WHY = (
    "Linux 5.14 to 6.4 need secretmem.enable=1 on the kernel command line, older kernels lack "
    "it, and seccomp filters (containers) may block it"
)
_SECRETMEM_HINT = (
    f"memfd_secret(2) is not available here: {_SECRETMEM_WHY}; use backing='auto' to fall "
    "back to private mmap memory"
)
# Whether memfd_secret failed with one of those errors in this process (then "auto" stops
# trying: the answer does not change while the process runs).
_secretmem_missing: list[int] = []
_secretmem_probe: list[int] = []


def secret_memory() -> tuple[Literal["memfd_secret", "mmap"], str]:
    """What ``Secure(backing="auto")`` uses in this process, and why (asked once)."""
    if not _secretmem_probe:
        probed = _core.memfd_secret_errno()
        if probed and probed not in _SECRETMEM_MISSING:
            # EMFILE, ENFILE, ENOMEM: the kernel has memfd_secret and the process is short of
            # something for now. Not an answer to keep: ask again next time, and let a secret
            # made meanwhile fail with that error instead of falling back to weaker memory.
            return "memfd_secret", (
                f"the kernel has memfd_secret(2) (the probe just now failed with "
                f"{errno.errorcode.get(probed, str(probed))}, which is not a missing kernel "
                "feature)"
            )
        _secretmem_probe.append(probed)
    failed = _secretmem_missing[0] if _secretmem_missing else _secretmem_probe[0]
    if not failed:
        return "memfd_secret", "the kernel has memfd_secret(2): pages out of its direct map"
    name = errno.errorcode.get(failed, str(failed))
    return "mmap", f"private mmap pages: memfd_secret(2) failed with {name} ({_SECRETMEM_WHY})"


R = TypeVar("R")

#: CAP_IPC_LOCK's bit in the capability sets (linux/capability.h).
_CAP_IPC_LOCK = 14


def _has_cap_ipc_lock() -> bool:
    """Whether this thread's effective capabilities hold CAP_IPC_LOCK (which lifts
    RLIMIT_MEMLOCK for mlock and, on most kernels, for secret memory)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
    except (OSError, ValueError):
        pass
    return False  # unknown: the limit is the safer reading


def _check_lockable(need: int, *, secretmem: bool) -> None:
    """Refuse, before anything is mapped, locked memory that can never be backed: more than
    the machine's memory, or more than RLIMIT_MEMLOCK allows (without CAP_IPC_LOCK).

    The kernel would refuse the second too, but only once the range is reserved (and some
    kernels only at the first touch of a page, see SECURITY.md); the first it would accept,
    and every touch of a page would then fault memory in until the OOM killer ends the
    process."""
    physical = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    if physical > 0 and need > physical:
        raise RegionError(
            f"a secure region of {need} bytes (the value and its canary, in whole pages) cannot "
            f"be backed: its pages are locked in memory, and this machine has {physical} bytes"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or need <= soft or _has_cap_ipc_lock():
        return
    what = "map locked secret memory for" if secretmem else "mlock"
    err = MprotectError(
        errno.EAGAIN if secretmem else errno.ENOMEM,
        f"cannot {what} a secure region of {need} bytes: RLIMIT_MEMLOCK is {soft} bytes and "
        f"locked memory counts against it; {_RLIMIT_HINT}",
    )
    err.syscall = "mmap" if secretmem else "mlock"
    raise err


def round_to_pages(size: int) -> int:
    """``size`` rounded up to a whole number of pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class Allocator(abc.ABC):
    """How a region's memory is mapped (the library's allocators only)."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_outside_subclass(
            cls,
            "pkeyguard allocators cannot be subclassed: the library maps, owns and "
            "releases the memory it protects. Use allocator.Mmap() or allocator.Secure()",
        )

    @abc.abstractmethod
    def _options(self) -> dict[str, Any]:
        """Keyword arguments for the core's mapping: guard pages, locking, wiping."""

    def _explain(self, exc: MprotectError) -> MprotectError:
        """A clearer error for a failed mapping (the default: unchanged)."""
        return exc

    def _map(self, make: Callable[..., R], size: int) -> R:
        """``make(**options)``: the core's mapping of ``size`` bytes, with a clearer error if
        it fails."""
        try:
            return make(**self._options())
        except MprotectError as exc:
            raise self._explain(exc) from None


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
      garbage collector); at interpreter exit, secure regions still open are zeroed;
    - locked pages are allocated when the region is made, so one that cannot be backed fails
      there (:class:`MprotectError` naming ``RLIMIT_MEMLOCK``, or :class:`RegionError` for a
      size larger than the machine's memory), never with ``SIGBUS`` at a later touch.

    ``backing`` says where the pages come from:

    - ``"memfd_secret"``: :manpage:`memfd_secret(2)` pages, removed from the kernel's direct
      map: ``/proc/PID/mem``, ``process_vm_readv`` and ``ptrace`` of the same user cannot read
      them (EIO), and neither can kernel code that would go through the direct map.  Always
      locked (they count against ``RLIMIT_MEMLOCK``) and left out of core dumps.  The mapping
      is shared, so it is ``MADV_DONTFORK``: a fork child gets zero pages in its place.
      Raises :class:`MprotectError` (``syscall='memfd_secret'``) where the kernel has none.
    - ``"mmap"``: private anonymous pages, ``mlock``-ed, ``MADV_WIPEONFORK``.
    - ``"auto"`` (the default): ``memfd_secret`` where the kernel offers it, else ``mmap``;
      with ``lock=False`` always ``mmap`` (secret memory is always locked).

    ``on_before_unmap(address, length)`` is a test hook called after zeroing.
    """

    __slots__ = ("backing", "canary_size", "lock", "on_before_unmap")

    def __init__(
        self,
        *,
        lock: bool = True,
        canary_size: int = 16,
        backing: Backing = "auto",
        on_before_unmap: Callable[[int, int], None] | None = None,
    ) -> None:
        canary_size = exact_int(
            canary_size, ArgumentTypeError, "canary_size must be an int, not {!r}"
        )
        if not 0 <= canary_size <= MAX_CANARY:
            raise RegionError(f"canary_size must be within 0..{MAX_CANARY}, got {canary_size}")
        if on_before_unmap is not None and not callable(on_before_unmap):
            raise ArgumentTypeError("on_before_unmap must be callable")
        if type(backing) is not str:
            raise ArgumentTypeError(f"backing must be one of {_BACKINGS}, not {backing!r}")
        if backing not in _BACKINGS:
            raise RegionError(f"backing must be one of {_BACKINGS}, got {backing!r}")
        if backing == "memfd_secret" and not lock:
            raise RegionError(
                "memfd_secret memory is always locked: lock=False needs backing='mmap'"
            )
        self.backing: Backing = backing
        self.lock: bool = bool(lock)
        self.canary_size: int = canary_size
        self.on_before_unmap: Callable[[int, int], None] | None = on_before_unmap

    def _options(self) -> dict[str, Any]:
        return {
            "guard_pages": True,
            "lock": self.lock,
            "dontdump": True,
            "wipeonfork": True,
            "canary_size": self.canary_size,
            "wipe": True,
            "on_release": self.on_before_unmap,
            "secretmem": self.backing == "memfd_secret",
        }

    def _map(self, make: Callable[..., R], size: int) -> R:
        """``auto``: memfd_secret first, then private memory if the kernel has none."""
        secretmem = self.backing == "memfd_secret" or (
            self.backing == "auto" and self.lock and secret_memory()[0] == "memfd_secret"
        )
        if self.lock:
            _check_lockable(round_to_pages(size + self.canary_size), secretmem=secretmem)
        if self.backing != "auto" or not secretmem:
            return super()._map(make, size)
        try:
            return make(**{**self._options(), "secretmem": True})
        except MprotectError as exc:
            if exc.syscall != "memfd_secret" or exc.errno not in _SECRETMEM_MISSING:
                raise self._explain(exc, secretmem=True) from None
            _secretmem_missing.append(exc.errno)
        return super()._map(make, size)

    def _explain(self, exc: MprotectError, *, secretmem: bool | None = None) -> MprotectError:
        if secretmem is None:
            secretmem = self.backing == "memfd_secret"
        locking = exc.syscall == "mlock" and exc.errno in (errno.ENOMEM, errno.EPERM, errno.EAGAIN)
        # mapping secret memory over RLIMIT_MEMLOCK: EAGAIN (the kernel locks it at mmap)
        locking |= secretmem and exc.syscall == "mmap" and exc.errno == errno.EAGAIN
        if exc.syscall == "memfd_secret" and exc.errno in _SECRETMEM_MISSING:
            err = MprotectError(exc.errno, f"{exc.strerror}: {_SECRETMEM_HINT}")
        elif locking:
            soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
            what = "mlock" if exc.syscall == "mlock" else "map locked secret memory for"
            err = MprotectError(
                exc.errno,
                f"cannot {what} a secure region: RLIMIT_MEMLOCK is "
                f"{limit} and locked memory counts against it; {_RLIMIT_HINT}",
            )
        else:
            return exc
        err.syscall = exc.syscall
        return err

    def __repr__(self) -> str:
        return (
            f"allocator.Secure(lock={self.lock}, canary_size={self.canary_size}, "
            f"backing={self.backing!r})"
        )


# Secure regions still open when the interpreter exits are zeroed (not unmapped: a daemon
# thread may still be reading one).
atexit.register(_core.wipe_at_exit)
