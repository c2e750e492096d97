"""Associating and disassociating keep the region's type.

Must type-check clean under mypy --strict and basedpyright (strict).
"""

import ctypes
from typing import Final, reveal_type

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

RW: Final = PkeyPermissions.ReadWrite


def lifecycle() -> None:
    region = RegionGuard(ctypes.c_uint16, name="counter")
    key = PkeyGuard(PkeyPermissions.NoAccess)
    assoc = key.associate(region)
    reveal_type(region.association)  # reveal: AssociatedRegion[c_uint16] | None
    reveal_type(assoc.region)  # reveal: RegionGuard[c_uint16]
    reveal_type(assoc.key)  # reveal: PkeyGuard
    reveal_type(key.current_rights())  # reveal: PkeyPermissions
    association = region.association
    if association is not None:  # the Optional must be narrowed before use
        with association.set_access_rights(RW) as w:
            w.mut_ref_guard().value = 1
    back = assoc.disassociate()
    reveal_type(back)  # reveal: RegionGuard[c_uint16]
    again = key.associate(back)
    reveal_type(key.disassociate(again))  # reveal: RegionGuard[c_uint16]
    key.close()
    region.close()
