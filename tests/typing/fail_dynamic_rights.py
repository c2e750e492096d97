"""Rights known only at run time give an AccessGuard: no view until the rights are narrowed
to one member (``if rights is PkeyPermissions.ReadWrite:``; see pass_rights_aliases.py).

A module-level alias without ``Final`` is the same case under mypy (it widens the alias to
PkeyPermissions; pyright keeps the Literal), so write ``RW: Final = ...``.
"""

import ctypes

from pkeyguard import AssociatedRegion, PkeyPermissions


def unknown_rights(assoc: AssociatedRegion[ctypes.c_uint32], rights: PkeyPermissions) -> None:
    with assoc.set_access_rights(rights) as guard:
        # E[mypy]: "AccessGuard[c_uint32]" has no attribute "ref_guard"
        # E[pyright]: Cannot access attribute "ref_guard" for class "AccessGuard[c_uint32]"
        guard.ref_guard()
        # E[mypy]: "AccessGuard[c_uint32]" has no attribute "mut_ref_guard"
        # E[pyright]: Cannot access attribute "mut_ref_guard" for class "AccessGuard[c_uint32]"
        guard.mut_ref_guard()


def two_of_three(assoc: AssociatedRegion[ctypes.c_uint32], rights: PkeyPermissions) -> None:
    if rights is not PkeyPermissions.ReadWrite:
        # rights is ReadOnly or NoAccess here: still no single guard class
        with assoc.set_access_rights(rights) as guard:
            # E[mypy]: "AccessGuard[c_uint32]" has no attribute "mut_ref_guard"
            # E[pyright]: Cannot access attribute "mut_ref_guard" for class "AccessGuard[c_uint32]"
            guard.mut_ref_guard()
