"""Scalar regions: the view's value type follows the ctypes type of the region.

Must type-check clean under mypy --strict and basedpyright (strict).  Each ``# reveal:``
comment is compared with what the checker's ``reveal_type`` says (module prefixes dropped).
"""

import ctypes
from typing import Final, reveal_type

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

# ``Final`` keeps the Literal member type: set_access_rights() can pick the guard class from
# it (see pass_rights_aliases.py for what happens without it).
RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess


def uint32() -> int:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        reveal_type(region)  # reveal: RegionGuard[c_uint32]
        assoc = key.associate(region)
        reveal_type(assoc)  # reveal: AssociatedRegion[c_uint32]
        reveal_type(assoc.set_access_rights(RW))  # reveal: WriteGuard[c_uint32]
        reveal_type(assoc.set_access_rights(RO))  # reveal: ReadGuard[c_uint32]
        reveal_type(assoc.set_access_rights(NA))  # reveal: NoAccessGuard[c_uint32]
        with assoc.set_access_rights(PkeyPermissions.ReadWrite) as w:
            reveal_type(w)  # reveal: WriteGuard[c_uint32]
            mut = w.mut_ref_guard()
            reveal_type(mut)  # reveal: MutScalarRef[int]
            mut.value = 123
            mut.value += 1
            reveal_type(w.ref_guard())  # reveal: ScalarRef[int]
        with assoc.set_access_rights(PkeyPermissions.ReadOnly) as r:
            ref = r.ref_guard()
            reveal_type(ref)  # reveal: ScalarRef[int]
            reveal_type(ref.value)  # reveal: int
            total: int = ref.value + 1
        with assoc.set_access_rights(PkeyPermissions.NoAccess) as n:
            reveal_type(n)  # reveal: NoAccessGuard[c_uint32]
        return total


def other_scalars() -> tuple[float, bool, bytes, int]:
    with (
        RegionGuard(ctypes.c_double) as d,
        RegionGuard(ctypes.c_bool) as b,
        RegionGuard(ctypes.c_char) as c,
        RegionGuard(ctypes.c_int64) as i,
        PkeyGuard() as key,
    ):
        with key.associate(d).set_access_rights(RW) as gd:
            reveal_type(gd.mut_ref_guard())  # reveal: MutScalarRef[float]
            gd.mut_ref_guard().value = 2.5
            x = gd.ref_guard().value
            reveal_type(x)  # reveal: float
        with key.associate(b).set_access_rights(RW) as gb:
            gb.mut_ref_guard().value = True
            y = gb.ref_guard().value
            reveal_type(y)  # reveal: bool
        with key.associate(c).set_access_rights(RW) as gc:
            gc.mut_ref_guard().value = b"x"
            z = gc.ref_guard().value
            reveal_type(z)  # reveal: bytes
        with key.associate(i).set_access_rights(RO) as gi:
            w = gi.ref_guard().value
            reveal_type(w)  # reveal: int
        return x, y, z, w
