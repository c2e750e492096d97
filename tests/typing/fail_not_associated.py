"""Rights are set through an association: a bare region or key has no set_access_rights().

``region.association`` is Optional: it must be checked for None first.  (An AssociatedRegion
that was disassociated keeps its type; using it raises RegionError at run time.)
"""

import ctypes
from typing import Final

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

RW: Final = PkeyPermissions.ReadWrite


def unassociated() -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        # E[mypy]: "RegionGuard[c_uint32]" has no attribute "set_access_rights"
        # E[pyright]: Cannot access attribute "set_access_rights" for class "RegionGuard[c_uint32]"
        region.set_access_rights(RW)
        # E[mypy]: "PkeyGuard" has no attribute "set_access_rights"
        # E[pyright]: Cannot access attribute "set_access_rights" for class "PkeyGuard"
        key.set_access_rights(RW)
        # E[mypy]: Item "None" of "AssociatedRegion[c_uint32] | None" has no attribute
        # E[pyright]: "set_access_rights" is not a known attribute of "None"
        region.association.set_access_rights(RW)
