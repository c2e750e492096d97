"""H4: relabelled ctypes types (``_type_``, ``_length_``) must not get a pointer or a longer
array past the region's checks: the child programs of
``test_h04_pointer_refusal_bypass.py``."""

from __future__ import annotations

import ctypes
from typing import Any

from pkeyguard import PkeyGuard, RegionGuard, RegionTypeError
from tests.adversarial.childlib import RW, raises
from tests.childhelpers import say


def case_a_relabelled_char_pointer_field_is_still_refused() -> None:
    class S(ctypes.Structure):
        _fields_ = (("p", ctypes.c_char_p),)

    pointer: Any = ctypes.c_char_p
    saved = pointer._type_
    pointer._type_ = "Q"
    region: Any
    try:
        region = RegionGuard(S)
    except RegionTypeError:
        region = None
    finally:
        pointer._type_ = saved
    if region is not None:
        assoc = PkeyGuard().associate(region)
        with assoc.set_access_rights(RW) as g:
            v: Any = g.mut_ref_guard()
            v.contents.p = 0xDEAD0000
            say("reading the field dereferences 0xdead0000")
            v.contents.p  # noqa: B018  # SIGSEGV


def case_an_array_relabelled_after_the_region_was_made() -> None:
    a: Any = ctypes.c_uint64 * 4
    region = RegionGuard(a)
    assoc = PkeyGuard().associate(region)
    with assoc.set_access_rights(RW) as g:
        v: Any = g.mut_ref_guard()
        v.contents[0] = 0xDEAD0000
        v.contents[1:3] = [5, 6]
        a._type_ = ctypes.c_char_p
        a._length_ = 1000
        assert v.contents[0] == 0xDEAD0000, v.contents[0]
        assert v.contents[1:3] == [5, 6]
        assert v.contents[::-1] == [0, 6, 5, 0xDEAD0000], v.contents[::-1]
        assert len(v.contents) == 4
        assert raises(IndexError, lambda: v.contents[4])
        v.contents[3] = 9
        assert list(v.contents) == [0xDEAD0000, 5, 6, 9]


def case_an_array_relabelled_before_the_region_is_made() -> None:
    lies: tuple[tuple[int, str, object], ...] = (
        (3, "_type_", ctypes.c_char_p),
        (4, "_length_", 1000),
    )
    for n, attr, lie in lies:
        a: Any = ctypes.c_uint64 * n  # a type of its own each time (ctypes caches c_uint64 * n)
        saved = getattr(a, attr)
        setattr(a, attr, lie)
        assert raises(RegionTypeError, RegionGuard, a)

        class S(ctypes.Structure):
            _fields_ = (("a", a),)

        assert raises(RegionTypeError, RegionGuard, S)
        setattr(a, attr, saved)
        RegionGuard(S).close()  # honest again: accepted
