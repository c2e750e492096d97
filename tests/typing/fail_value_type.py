"""The value type follows the region's type: a c_uint32 region holds an int, not a str.

Each marked line uses a view with the wrong type; the checker must say so.
"""

import ctypes
from typing import Final

from pkeyguard import AssociatedRegion, PkeyPermissions

RW: Final = PkeyPermissions.ReadWrite


class Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int32),)
    x: int


def scalars(
    u32: AssociatedRegion[ctypes.c_uint32],
    dbl: AssociatedRegion[ctypes.c_double],
    ch: AssociatedRegion[ctypes.c_char],
) -> None:
    with u32.set_access_rights(RW) as guard:
        # E[mypy]: (expression has type "int", variable has type "str")
        # E[pyright]: Type "int" is not assignable to declared type "str"
        text: str = guard.ref_guard().value
        # E[mypy]: (expression has type "float", variable has type "int")
        # E[pyright]: "float" is not assignable to "int"
        guard.mut_ref_guard().value = 1.5
        # E[mypy]: (expression has type "str", variable has type "int")
        # E[pyright]: "Literal['7']" is not assignable to "int"
        guard.mut_ref_guard().value = "7"
        print(text)
    with dbl.set_access_rights(RW) as guard:
        # E[mypy]: (expression has type "str", variable has type "float")
        # E[pyright]: "Literal['2.5']" is not assignable to "float"
        guard.mut_ref_guard().value = "2.5"
    with ch.set_access_rights(RW) as guard:
        # E[mypy]: (expression has type "int", variable has type "bytes")
        # E[pyright]: "Literal[65]" is not assignable to "bytes"
        guard.mut_ref_guard().value = 65


def shapes(
    u32: AssociatedRegion[ctypes.c_uint32],
    raw: AssociatedRegion[bytes],
    point: AssociatedRegion[Point],
) -> None:
    with u32.set_access_rights(RW) as guard:
        # E[mypy]: "ScalarRef[int]" has no attribute "contents"
        # E[pyright]: Cannot access attribute "contents" for class "ScalarRef[int]"
        print(guard.ref_guard().contents)
    with raw.set_access_rights(RW) as guard:
        # E[mypy]: "BytesRef" has no attribute "contents"
        # E[pyright]: Cannot access attribute "contents" for class "BytesRef"
        print(guard.ref_guard().contents)
    with point.set_access_rights(RW) as guard:
        # E[mypy]: (expression has type "str", variable has type "int")
        # E[pyright]: "Literal['three']" is not assignable to "int"
        guard.mut_ref_guard().contents.x = "three"
