"""The run-time half of the typestate: every rule of tests/typing holds for code that skips
the checker (``cast``, ``Any``, calling the method through the class).

Each test names the typing program whose rule it mirrors.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

import pytest

from pkeyguard import (
    AccessError,
    AssociatedRegion,
    GuardStateError,
    MutScalarRef,
    NoAccessGuard,
    PkeyGuard,
    PkeyPermissions,
    ReadGuard,
    RegionError,
    RegionGuard,
    RegionTypeError,
    WriteGuard,
)
from tests.support import perms_at

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess


class Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int32),)


@pytest.fixture
def u32(no_leaks: None) -> Iterator[AssociatedRegion[ctypes.c_uint32]]:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard(NA) as key:
        yield key.associate(region)


@pytest.fixture
def raw(no_leaks: None) -> Iterator[AssociatedRegion[bytes]]:
    with RegionGuard(16) as region, PkeyGuard(NA) as key:
        yield key.associate(region)


# -- fail_write_under_read_only.py, fail_no_access.py -----------------------------------


def test_write_view_under_read_only_by_any_route(u32: AssociatedRegion[ctypes.c_uint32]) -> None:
    with u32.set_access_rights(RO) as guard:
        routes: list[Callable[[], object]] = [
            lambda: cast(Any, guard).mut_ref_guard(),
            lambda: cast(WriteGuard[ctypes.c_uint32], guard).mut_ref_guard(),
            lambda: WriteGuard.mut_ref_guard(cast(Any, guard)),  # bypasses __getattr__
            lambda: guard._new_view(True),  # the C check under them
        ]
        for route in routes:
            with pytest.raises(AccessError, match="ReadWrite"):
                route()
        with pytest.raises(TypeError, match="cannot create"):  # views come from guards only
            cast(Any, MutScalarRef)(guard, u32.region.address, 4, "I", True)
        assert guard.ref_guard().value == 0  # reading is what it grants
    assert perms_at(u32.region.address) == "---p"


def test_views_under_no_access_by_any_route(raw: AssociatedRegion[bytes]) -> None:
    with raw.set_access_rights(NA) as guard:
        routes: list[Callable[[], object]] = [
            lambda: cast(Any, guard).ref_guard(),
            lambda: cast(Any, guard).mut_ref_guard(),
            lambda: cast(ReadGuard[bytes], guard).ref_guard(),
            lambda: ReadGuard.ref_guard(cast(Any, guard)),
            lambda: WriteGuard.mut_ref_guard(cast(Any, guard)),
        ]
        for route in routes:
            with pytest.raises(AccessError):
                route()
    with raw.set_access_rights(NA) as guard, pytest.raises(AccessError, match="NoAccess"):
        cast(Any, guard).ref_guard()


# -- fail_dynamic_rights.py: the object is always the class the rights say ----------------


@pytest.mark.parametrize(
    ("rights", "cls"), [(RW, WriteGuard), (RO, ReadGuard), (NA, NoAccessGuard)]
)
def test_dynamic_rights_give_the_concrete_class(
    u32: AssociatedRegion[ctypes.c_uint32], rights: PkeyPermissions, cls: type[object]
) -> None:
    guard = u32.set_access_rights(rights)
    assert type(guard) is cls
    with guard:
        if rights is not RW:
            with pytest.raises(AccessError):
                cast(Any, guard).mut_ref_guard()


# -- fail_assign_through_read_view.py ----------------------------------------------------


def test_assign_through_read_views(
    u32: AssociatedRegion[ctypes.c_uint32], raw: AssociatedRegion[bytes]
) -> None:
    # ref_guard() is a read view under ReadWrite too
    for guard in (u32.set_access_rights(RO), u32.set_access_rights(RW)):
        with guard:
            view: Any = guard.ref_guard()
            with pytest.raises(AccessError, match="read-only"):
                view.value = 1
            assert view.value == 0
    with raw.set_access_rights(RO) as rguard:
        bview: Any = rguard.ref_guard()
        writes: list[Callable[[], object]] = [
            lambda: setattr(bview, "value", bytes(16)),
            lambda: bview.__setitem__(0, 1),
            lambda: bview.__setitem__(slice(0, 2), b"ab"),
        ]
        for write in writes:
            with pytest.raises(AccessError, match="read-only"):
                write()
        with memoryview(bview) as mv:
            assert mv.readonly
            with pytest.raises(TypeError):
                mv[0] = 1
        assert bytes(bview) == bytes(16)


def test_assign_through_read_composite_view(no_leaks: None) -> None:
    # The checkers type .contents as the Structure itself, so this one is run-time only.
    with RegionGuard(Point) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RO) as guard:
            contents = guard.ref_guard().contents
            with pytest.raises(AccessError, match="read-only"):
                contents.x = 3
            assert contents.x == 0


# -- fail_value_type.py ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "bad"),
    [
        (ctypes.c_uint32, 1.5),
        (ctypes.c_uint32, "7"),
        (ctypes.c_double, "2.5"),
        (ctypes.c_char, 65),
    ],
)
def test_wrong_value_type(no_leaks: None, ctype: Any, bad: object) -> None:
    with RegionGuard(ctype) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as guard:
            view: Any = guard.mut_ref_guard()
            before = view.value
            with pytest.raises(TypeError):
                view.value = bad
            assert view.value == before


def test_wrong_shape(u32: AssociatedRegion[ctypes.c_uint32], raw: AssociatedRegion[bytes]) -> None:
    with u32.set_access_rights(RW) as guard, pytest.raises(AttributeError):
        _ = cast(Any, guard.ref_guard()).contents
    with raw.set_access_rights(RW) as bguard, pytest.raises(AttributeError):
        _ = cast(Any, bguard.ref_guard()).contents


# -- fail_not_associated.py --------------------------------------------------------------


def test_rights_need_an_association(no_leaks: None) -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        for owner in (region, key, region.association):
            with pytest.raises(AttributeError):
                cast(Any, owner).set_access_rights(RW)
        assoc = key.associate(region)
        guard = assoc.set_access_rights(RW)  # taken while associated ...
        assoc.disassociate()
        with pytest.raises(RegionError, match="no longer associated"):
            assoc.set_access_rights(RW)
        with pytest.raises(GuardStateError, match="association has ended"):
            guard.__enter__()  # ... and useless once the association ended
        assert not guard.active


# -- fail_region_value_type.py -----------------------------------------------------------


@pytest.mark.parametrize("value_type", [str, bytes, 3.5])
def test_region_value_types(no_leaks: None, value_type: object) -> None:
    with pytest.raises(RegionTypeError):
        RegionGuard(cast(Any, value_type))
