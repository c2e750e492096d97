"""A read view is read-only to the checker: assigning its value or its items is an error.

At run time the same assignments raise AccessError (tests/unit/test_runtime_typestate.py).
"""

import ctypes
from typing import Final

from pkeyguard import AssociatedRegion, PkeyPermissions

RO: Final = PkeyPermissions.ReadOnly
RW: Final = PkeyPermissions.ReadWrite


def scalar(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    with assoc.set_access_rights(RO) as guard:
        view = guard.ref_guard()
        # E[mypy]: Property "value" defined in "ScalarRef" is read-only
        # E[pyright]: Cannot assign to attribute "value" for class "ScalarRef[int]"
        view.value = 1
    with assoc.set_access_rights(RW) as guard:
        view = guard.ref_guard()  # ref_guard() is a read view even under ReadWrite
        # E[mypy]: Property "value" defined in "ScalarRef" is read-only
        # E[pyright]: Cannot assign to attribute "value" for class "ScalarRef[int]"
        view.value = 2


def byte_region(assoc: AssociatedRegion[bytes]) -> None:
    with assoc.set_access_rights(RO) as guard:
        view = guard.ref_guard()
        # E[mypy]: Property "value" defined in "BytesRef" is read-only
        # E[pyright]: Cannot assign to attribute "value" for class "BytesRef"
        view.value = b"x"
        # E[mypy]: Unsupported target for indexed assignment ("BytesRef")
        # E[pyright]: "__setitem__" method not defined on type "BytesRef"
        view[0] = 1
        # E[mypy]: Unsupported target for indexed assignment ("BytesRef")
        # E[pyright]: "__setitem__" method not defined on type "BytesRef"
        view[0:2] = b"ab"
