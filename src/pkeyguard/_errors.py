"""One exception tree for pkeyguard.

Every error is a :class:`PkeyguardError`; each family also inherits the builtin a caller
would naturally catch (``OSError`` for failed system calls, ``RuntimeError`` for misuse of
guards, ``ValueError`` for bad arguments and closed objects), as msgspec and trio do.
"""

from __future__ import annotations

import sys

from . import _core

__all__ = [
    "AccessError",
    "CanaryError",
    "GuardError",
    "GuardOrderError",
    "GuardStateError",
    "GuardThreadError",
    "KeyExhaustedError",
    "MprotectError",
    "PkeyGuardError",
    "PkeyguardError",
    "PkuUnavailableError",
    "RegionError",
    "RegionTypeError",
    "ViewError",
]


class PkeyguardError(Exception):
    """Root of every error pkeyguard raises."""


class MprotectError(PkeyguardError, OSError):
    """A memory system call (mmap, mprotect, pkey_mprotect, pkey_alloc, ...) failed.

    ``errno`` and ``strerror`` are set as for :class:`OSError`; ``syscall`` names the call.
    """

    syscall: str | None = None

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (originated from {self.syscall})" if self.syscall else base


class PkeyGuardError(PkeyguardError):
    """A protection key was misused (closed, still in use, wrong backend)."""


class KeyExhaustedError(PkeyGuardError, MprotectError):
    """No protection key is free (``pkey_alloc`` gave ENOSPC): x86 has 15 allocatable keys."""


class PkuUnavailableError(PkeyguardError, RuntimeError):
    """The ``pku`` backend was asked for, but this CPU or kernel cannot provide it."""


class RegionError(PkeyguardError, ValueError):
    """A region was misused: bad type or size, closed, associated twice, in use."""


class RegionTypeError(RegionError, TypeError):
    """A region was asked for with a value type or argument of the wrong type."""


class GuardError(PkeyguardError, RuntimeError):
    """Base of errors from entering or leaving a rights guard."""


class GuardStateError(GuardError):
    """A guard was entered twice, exited without being entered, or its key is closed."""


class GuardOrderError(GuardError):
    """Guards were exited out of LIFO order; the rights were unwound to a consistent state."""


class GuardThreadError(GuardError):
    """A guard was exited on a thread other than the one that entered it."""


class AccessError(PkeyguardError, PermissionError):
    """The requested access is not granted (write view under ReadOnly, view under NoAccess)."""


class ViewError(PkeyguardError, ValueError):
    """A view was used after its guard exited, from another thread, or outlived by exports."""


class CanaryError(PkeyguardError, RuntimeError):
    """The bytes after a secure region's value were overwritten (a buffer overflow)."""


# The C core raises these classes, looked up here by name.
_core._set_error_module(sys.modules[__name__])
