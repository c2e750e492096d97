"""A NoAccess guard grants nothing: neither ref_guard() nor mut_ref_guard() exists on it.

At run time both raise AccessError (tests/unit/test_runtime_typestate.py).
"""

import ctypes
from typing import Final

from pkeyguard import AssociatedRegion, PkeyPermissions

NA: Final = PkeyPermissions.NoAccess


def read_through_no_access(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    with assoc.set_access_rights(PkeyPermissions.NoAccess) as guard:
        # E[mypy]: "NoAccessGuard[c_uint32]" has no attribute "ref_guard"
        # E[pyright]: Cannot access attribute "ref_guard" for class "NoAccessGuard[c_uint32]"
        guard.ref_guard()
        # E[mypy]: "NoAccessGuard[c_uint32]" has no attribute "mut_ref_guard"
        # E[pyright]: Cannot access attribute "mut_ref_guard" for class "NoAccessGuard[c_uint32]"
        guard.mut_ref_guard()
    with assoc.set_access_rights(NA) as guard:
        # E[mypy]: "NoAccessGuard[c_uint32]" has no attribute "ref_guard"
        # E[pyright]: Cannot access attribute "ref_guard" for class "NoAccessGuard[c_uint32]"
        guard.ref_guard()


def byte_region(assoc: AssociatedRegion[bytes]) -> None:
    with assoc.set_access_rights(NA) as guard:
        # E[mypy]: "NoAccessGuard[bytes]" has no attribute "ref_guard"
        # E[pyright]: Cannot access attribute "ref_guard" for class "NoAccessGuard[bytes]"
        guard.ref_guard()
