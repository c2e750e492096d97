"""pkeyguard: hardware-enforced memory protection with Linux memory protection keys.

Memory lives in page-aligned regions (:class:`RegionGuard`), tagged with a protection key
(:class:`PkeyGuard`).  A thread opens its own rights to the key's memory for the length of
a ``with`` block (``associated.set_access_rights(...)``); the CPU faults any other access.
Without PKU, the ``mprotect`` backend keeps the same API with process-wide rights; see
:func:`backend` for which one is active and what it guarantees.
"""

# Layout, in layers: a module imports from its own layer and the layers below it only
# (docs/architecture.md says what each part of the C core does).
#
#   C core        _core (keys and their pool, mappings, bindings, guards, views, the fault
#                 reporter; every check-and-change is one call there), _terminal (echo off)
#   vocabulary    _errors (the error tree), _permissions (the rights enums, from the core's
#                 one table), _owned (no pickling, copying or subclassing)
#   shared rules  _checks (the argument checkers: exact ints, names, rights, page rights),
#                 _layouts (what ctypes recorded about a type: scalar codes, pointers, array
#                 and field layouts)
#   parts         allocator (how region memory is mapped), views (view classes, composite
#                 proxies), _backend (which backend, why; the mode new keys get), faults
#   objects       region (RegionGuard), then pkey (PkeyGuard, AssociatedRegion, the guards);
#                 region names AssociatedRegion for type checkers only, since the public
#                 types point both ways (region.association, assoc.region)
#   uses          secret (Secret), isolation (isolated), _support and __main__ (the CLI)
#   this module   the public names, sealed once every class exists
#
# Modules use each other's public names only.  Underscored methods of the core's types and
# Allocator._map (how a region asks for its memory) are interfaces inside the package: they
# stay underscored because users must not call them.

from __future__ import annotations

import sys

if sys.platform != "linux":  # before anything loads the C core: say why, not a loader error
    # The same text as setup.py's build stop (issue 20).
    raise ImportError(
        "pkeyguard needs Linux (it uses Linux memory protection keys, or mprotect as Linux "
        f"provides it); this system is {sys.platform!r}"
    )

import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import _owned, allocator, faults
from ._backend import BackendInfo, backend
from ._errors import (
    DEPRECATED_NAMES,
    AccessError,
    ArgumentTypeError,
    ArgumentValueError,
    CanaryError,
    GuardError,
    GuardOrderError,
    GuardStateError,
    GuardThreadError,
    KeyExhaustedError,
    KeyStateError,
    MprotectError,
    PkeyguardError,
    PkuUnavailableError,
    RegionError,
    RegionTypeError,
    SecretUnavailableError,
    StreamError,
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

try:
    __version__ = version("pkeyguard")  # one source: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # pragma: no cover - imported from a source tree never installed
    __version__ = "0+unknown"

__all__ = [
    "AccessError",
    "AccessGuard",
    "AccessPermissions",
    "ArgumentTypeError",
    "ArgumentValueError",
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
    "KeyStateError",
    "MprotectError",
    "MutBytesRef",
    "MutCompositeRef",
    "MutScalarRef",
    "NoAccessGuard",
    "PkeyGuard",
    "PkeyPermissions",
    "PkeyguardError",
    "PkuUnavailableError",
    "ReadGuard",
    "RegionError",
    "RegionGuard",
    "RegionTypeError",
    "ScalarRef",
    "Secret",
    "SecretUnavailableError",
    "StreamError",
    "ViewError",
    "WriteGuard",
    "allocator",
    "backend",
    "faults",
    "isolate",
    "isolated",
]


def _public_module_names() -> None:
    """Tracebacks and reprs say ``pkeyguard.RegionError``, not ``pkeyguard._errors...``."""
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("pkeyguard."):
            obj.__module__ = "pkeyguard"


_public_module_names()
_owned.seal()  # every class is defined: none can be subclassed from here on


def __getattr__(name: str) -> Any:
    if name in DEPRECATED_NAMES:
        new, obj = DEPRECATED_NAMES[name]
        warnings.warn(
            f"pkeyguard.{name} is deprecated: it is called pkeyguard.{new} now "
            "(the old name will go in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return obj
    raise AttributeError(f"module 'pkeyguard' has no attribute {name!r}")
