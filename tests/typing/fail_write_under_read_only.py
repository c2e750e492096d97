"""A write view needs a ReadWrite guard: mut_ref_guard() under ReadOnly is a type error.

At run time the same call raises AccessError (tests/unit/test_runtime_typestate.py).
Expected errors: ``# E[checker]: fragment`` on the line above (or at the end of) the line.
"""

import ctypes
from typing import Final

from pkeyguard import AssociatedRegion, PkeyPermissions

RO: Final = PkeyPermissions.ReadOnly


def write_through_read_guard(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    with assoc.set_access_rights(PkeyPermissions.ReadOnly) as guard:
        # E[mypy]: "ReadGuard[c_uint32]" has no attribute "mut_ref_guard"
        # E[pyright]: Cannot access attribute "mut_ref_guard" for class "ReadGuard[c_uint32]"
        guard.mut_ref_guard().value = 1
    with assoc.set_access_rights(RO) as guard:
        # E[mypy]: "ReadGuard[c_uint32]" has no attribute "mut_ref_guard"
        # E[pyright]: Cannot access attribute "mut_ref_guard" for class "ReadGuard[c_uint32]"
        guard.mut_ref_guard()


def chained(assoc: AssociatedRegion[ctypes.c_double]) -> None:
    # E[mypy]: "ReadGuard[c_double]" has no attribute "mut_ref_guard"
    # E[pyright]: Cannot access attribute "mut_ref_guard" for class "ReadGuard[c_double]"
    assoc.set_access_rights(RO).mut_ref_guard()


def bytes_region(assoc: AssociatedRegion[bytes]) -> None:
    with assoc.set_access_rights(RO) as guard:
        # E[mypy]: "ReadGuard[bytes]" has no attribute "mut_ref_guard"
        # E[pyright]: Cannot access attribute "mut_ref_guard" for class "ReadGuard[bytes]"
        guard.mut_ref_guard()
