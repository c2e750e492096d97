"""Structure and array regions: CompositeRef[S] whose ``.contents`` is typed as S.

ctypes fields are ``Any`` to a type checker unless the Structure also annotates them (as
``Point`` does): then ``contents.x`` is an ``int``.  Must type-check clean under mypy
--strict and basedpyright (strict).
"""

import ctypes
from typing import Final, reveal_type

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly


class Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int32), ("y", ctypes.c_double))
    x: int
    y: float


class Plain(ctypes.Structure):
    _fields_ = (("n", ctypes.c_uint64),)


def structures() -> tuple[int, float]:
    with RegionGuard(Point) as region, RegionGuard(Plain) as plain, PkeyGuard() as key:
        reveal_type(region)  # reveal: RegionGuard[Point]
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as w:
            mut = w.mut_ref_guard()
            reveal_type(mut)  # reveal: MutCompositeRef[Point]
            reveal_type(mut.contents)  # reveal: Point
            mut.contents.x = 3
            mut.contents.y = 0.5
        with assoc.set_access_rights(RO) as r:
            ref = r.ref_guard()
            reveal_type(ref)  # reveal: CompositeRef[Point]
            p = ref.contents
            reveal_type(p)  # reveal: Point
            reveal_type(p.x)  # reveal: int
            reveal_type(p.y)  # reveal: float
            result = (p.x, p.y)
        with key.associate(plain).set_access_rights(RO) as pr:
            reveal_type(pr.ref_guard().contents)  # reveal: Plain
        return result


def arrays() -> int:
    with RegionGuard(ctypes.c_uint8 * 16) as region, PkeyGuard() as key:
        reveal_type(region)  # reveal: RegionGuard[Array[c_ubyte]]
        with key.associate(region).set_access_rights(RW) as w:
            arr = w.mut_ref_guard().contents
            reveal_type(arr)  # reveal: Array[c_ubyte]
            arr[0] = 7
            reveal_type(arr[0])  # reveal[mypy]: int  # reveal[pyright]: Any
            return arr[0]
