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


class PkeyPermissions(enum.Enum, metaclass=_core.RightsType):
    """Rights a thread has through a protection key (a key's field in the rights register:
    PKRU's bits on x86-64)."""

    NoAccess = "NoAccess"
    ReadOnly = "ReadOnly"
    ReadWrite = "ReadWrite"

    # Members are singletons: identity hashing is correct, and it is C-fast (Enum's own
    # __hash__ is Python code), which matters on the set_access_rights() path.
    __hash__ = object.__hash__

    @property
    def level(self) -> int:
        """The level, from least to most permissive (the C core's order: 0, 1, 2 today)."""
        return _LEVELS[self]

    @property
    def pkru_bits(self) -> int:
        """The key's field in the rights register for these rights: on x86-64, PKRU's AD
        (1), WD (2) or 0."""
        return _core.RIGHTS[_LEVELS[self]][1]

    @classmethod
    def from_pkru_bits(cls, bits: int) -> PkeyPermissions:
        """Rights that two PKRU bits grant (AD wins over WD), decoded by the core's one
        decoder (``_rights.h``)."""
        return LEVEL_TO_PERMISSION[_core.level_of_bits(bits)]


# Levels and bits come from the core's one table (_rights.h), in level order.
LEVEL_TO_PERMISSION = {level: PkeyPermissions[name] for level, (name, _) in enumerate(_core.RIGHTS)}
_LEVELS = {member: level for level, member in LEVEL_TO_PERMISSION.items()}
