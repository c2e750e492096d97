"""pkeyguard: hardware-enforced memory protection with Linux memory protection keys.

Memory lives in page-aligned regions (:class:`RegionGuard`), tagged with a protection key
(:class:`PkeyGuard`).  A thread opens its own rights to the key's memory for the length of
a ``with`` block (``associated.set_access_rights(...)``); the CPU faults any other access.
Without PKU, the ``mprotect`` backend keeps the same API with process-wide rights; see
:func:`backend` for which one is active and what it guarantees.
"""

from __future__ import annotations

from . import allocator, faults
from ._backend import BackendInfo, backend
from ._errors import (
    AccessError,
    CanaryError,
    GuardError,
    GuardOrderError,
    GuardStateError,
    GuardThreadError,
    KeyExhaustedError,
    MprotectError,
    PkeyGuardError,
    PkeyguardError,
    PkuUnavailableError,
    RegionError,
    RegionTypeError,
    ViewError,
)
from ._permissions import AccessPermissions, PkeyPermissions
from .isolation import isolate, isolated
from .pkey import (
    AccessGuard,
    AssociatedRegion,
    NoAccessGuard,
    PkeyGuard,
    ReadGuard,
    WriteGuard,
)
from .region import RegionGuard
from .secret import Secret
from .views import BytesRef, CompositeRef, MutBytesRef, MutCompositeRef, MutScalarRef, ScalarRef

__version__ = "0.1.0"

__all__ = [
    "AccessError",
    "AccessGuard",
    "AccessPermissions",
    "AssociatedRegion",
    "BackendInfo",
    "BytesRef",
    "CanaryError",
    "CompositeRef",
    "GuardError",
    "GuardOrderError",
    "GuardStateError",
    "GuardThreadError",
    "KeyExhaustedError",
    "MprotectError",
    "MutBytesRef",
    "MutCompositeRef",
    "MutScalarRef",
    "NoAccessGuard",
    "PkeyGuard",
    "PkeyGuardError",
    "PkeyPermissions",
    "PkeyguardError",
    "PkuUnavailableError",
    "ReadGuard",
    "RegionError",
    "RegionGuard",
    "RegionTypeError",
    "ScalarRef",
    "Secret",
    "ViewError",
    "WriteGuard",
    "allocator",
    "backend",
    "faults",
    "isolate",
    "isolated",
]
