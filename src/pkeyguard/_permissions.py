"""The two kinds of rights: page rights (mprotect) and key rights (PKRU)."""

from __future__ import annotations

import enum

from . import _core

__all__ = ["AccessPermissions", "PkeyPermissions"]


class AccessPermissions(enum.IntEnum):
    """Page rights of a region, applied with ``mprotect`` (values are ``PROT_*`` bits).

    Effective access is the page rights intersected with the key's rights.
    """

    NoAccess = _core.PROT_NONE
    ReadOnly = _core.PROT_READ
    ReadWrite = _core.PROT_READ | _core.PROT_WRITE
    ReadExecute = _core.PROT_READ | _core.PROT_EXEC
    ReadWriteExecute = _core.PROT_READ | _core.PROT_WRITE | _core.PROT_EXEC

    @property
    def readable(self) -> bool:
        return bool(self & _core.PROT_READ)

    @property
    def writable(self) -> bool:
        return bool(self & _core.PROT_WRITE)


class PkeyPermissions(enum.Enum):
    """Rights a thread has through a protection key (the PKRU bits of ``pkey_alloc(2)``)."""

    NoAccess = "NoAccess"
    ReadOnly = "ReadOnly"
    ReadWrite = "ReadWrite"

    # Members are singletons: identity hashing is correct, and it is C-fast (Enum's own
    # __hash__ is Python code), which matters on the set_access_rights() path.
    __hash__ = object.__hash__

    @property
    def level(self) -> int:
        """0, 1, 2 from least to most permissive (the C core's order)."""
        return _LEVELS[self]

    @property
    def pkru_bits(self) -> int:
        """``PKEY_DISABLE_ACCESS`` (1), ``PKEY_DISABLE_WRITE`` (2) or 0."""
        return _PKRU_BITS[self]

    @classmethod
    def from_pkru_bits(cls, bits: int) -> PkeyPermissions:
        """Rights that two PKRU bits grant (AD wins over WD)."""
        if bits & 1:
            return cls.NoAccess
        if bits & 2:
            return cls.ReadOnly
        return cls.ReadWrite


_LEVELS = {
    PkeyPermissions.NoAccess: 0,
    PkeyPermissions.ReadOnly: 1,
    PkeyPermissions.ReadWrite: 2,
}
_PKRU_BITS = {
    PkeyPermissions.NoAccess: 1,
    PkeyPermissions.ReadOnly: 2,
    PkeyPermissions.ReadWrite: 0,
}
LEVEL_TO_PERMISSION = {v: k for k, v in _LEVELS.items()}
