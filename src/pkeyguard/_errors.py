"""One exception tree for pkeyguard.

Every error is a :class:`PkeyguardError`; each family also inherits the builtin a caller
would naturally catch (``OSError`` for failed system calls, ``RuntimeError`` for misuse of
keys and guards, ``ValueError`` for bad values and closed objects, ``TypeError`` for an
argument of the wrong type), as msgspec and trio do.  The C core raises these same classes,
looked up here by name: one refusal raises one class, whichever layer makes it.
"""

from __future__ import annotations

import sys

from . import _core

__all__ = [
    "AccessError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "CanaryError",
    "GuardError",
    "GuardOrderError",
    "GuardStateError",
    "GuardThreadError",
    "KeyExhaustedError",
    "KeyStateError",
    "MprotectError",
    "PkeyguardError",
    "PkuUnavailableError",
    "RegionError",
    "RegionTypeError",
    "SecretUnavailableError",
    "StreamError",
    "ViewError",
]


class PkeyguardError(Exception):
    """Root of every error pkeyguard raises."""


class ArgumentTypeError(PkeyguardError, TypeError):
    """An argument has the wrong type (rights that are not a PkeyPermissions member, say)."""


class ArgumentValueError(PkeyguardError, ValueError):
    """An argument has the right type and a value that is refused (a ``name`` with a control
    character or a lone surrogate, or longer than 256 characters)."""


class MprotectError(PkeyguardError, OSError):
    """A memory system call (mmap, mprotect, pkey_mprotect, pkey_alloc, ...) failed.

    ``errno`` and ``strerror`` are set as for :class:`OSError`; ``syscall`` names the call.
    """

    syscall: str | None = None

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (originated from {self.syscall})" if self.syscall else base


class KeyStateError(PkeyguardError, RuntimeError):
    """A protection key was misused: used after close, or closed while guards are active.

    (Called ``PkeyGuardError`` before 0.2; that name is a deprecated alias.)
    """


class KeyExhaustedError(MprotectError, KeyStateError):
    """No protection key is free (``pkey_alloc`` gave ENOSPC): x86 has 15 allocatable keys.

    (OSError first among the bases: its constructor is the one that sets ``errno``.)
    """


class PkuUnavailableError(PkeyguardError, RuntimeError):
    """The ``pku`` backend was asked for, but this CPU or kernel cannot provide it."""


class RegionError(PkeyguardError, ValueError):
    """A region was misused: bad size, closed, associated twice, in use."""


class RegionTypeError(RegionError, ArgumentTypeError):
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


class SecretUnavailableError(PkeyguardError, RuntimeError):
    """A Secret's bytes are not in this process: it was made before a ``fork()``.

    A fork child never gets a parent's secret memory (it sees zero pages there); it can close
    the inherited Secret, and make or load its own.
    """


class StreamError(PkeyguardError, ValueError):
    """A stream gave bytes for a Secret the wrong way: ``readinto`` returned something other
    than a byte count within the buffer, no data from a non-blocking stream, kept the buffer
    it was handed, or more than ``max_size`` bytes arrived."""


#: Old names kept for one release; using them warns (see ``pkeyguard.__getattr__``).
DEPRECATED_NAMES = {"PkeyGuardError": ("KeyStateError", KeyStateError)}

# The C core raises these classes, looked up here by name.
_core._set_error_module(sys.modules[__name__])
