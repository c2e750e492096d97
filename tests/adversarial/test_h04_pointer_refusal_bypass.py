"""H4 (pre-existing, not from issue 12; same root as H3): the pointer refusal of class 2 reads
the mutable class attribute `_type_`.  Setting `ctypes.c_char_p._type_ = "Q"` for the
duration of RegionGuard(S) (S a Structure with a c_char_p field) gets S accepted; ctypes still
treats the field as char*, so reading `view.contents.p` dereferences whatever the region holds:
SIGSEGV in views._Proxy.__getattr__ (getattr(scratch, name)).

Root cause: region._pointer_in() (and _classify(), H3) trust getattr(value_type, "_type_"),
a class attribute anyone can reassign after ctypes fixed the layout.  The format ctypes itself
fixed at class creation is memoryview(value_type()).format ("<z" for c_char_p, "<B" for the
relabelled c_uint8 of H3, whatever _type_ says now).
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack


def test_a_relabelled_char_pointer_field_is_still_refused() -> None:
    body = """
class S(ctypes.Structure):
    _fields_ = [("p", ctypes.c_char_p)]
saved = ctypes.c_char_p._type_
ctypes.c_char_p._type_ = "Q"
try:
    region = RegionGuard(S)
except RegionTypeError:
    region = None
finally:
    ctypes.c_char_p._type_ = saved
if region is not None:
    assoc = PkeyGuard().associate(region)
    with assoc.set_access_rights(RW) as g:
        v = g.mut_ref_guard()
        v.contents.p = 0xDEAD0000
        print("reading the field dereferences 0xdead0000", flush=True)
        v.contents.p   # SIGSEGV
"""
    assert_survived(attack(body, timeout=60, watchdog=30))


def test_an_array_relabelled_after_the_region_was_made_reads_what_ctypes_stored() -> None:
    # The layout is checked when the region is made; a composite view must not trust the
    # array's _type_ and _length_ afterwards either: relabelling the element type as char*
    # would make a read dereference the region's bytes, and a longer _length_ would index
    # past the value.
    body = """
A = ctypes.c_uint64 * 4
region = RegionGuard(A)
assoc = PkeyGuard().associate(region)
with assoc.set_access_rights(RW) as g:
    v = g.mut_ref_guard()
    v.contents[0] = 0xDEAD0000
    v.contents[1:3] = [5, 6]
    A._type_ = ctypes.c_char_p
    A._length_ = 1000
    assert v.contents[0] == 0xDEAD0000, v.contents[0]
    assert v.contents[1:3] == [5, 6]
    assert v.contents[::-1] == [0, 6, 5, 0xDEAD0000], v.contents[::-1]
    assert len(v.contents) == 4
    assert raises(IndexError, lambda: v.contents[4])
    v.contents[3] = 9
    assert list(v.contents) == [0xDEAD0000, 5, 6, 9]
"""
    assert_survived(attack(body, timeout=60, watchdog=30))


def test_an_array_relabelled_before_the_region_is_made_is_refused() -> None:
    # _type_ or _length_ no longer describe the array ctypes made: believing them would index
    # char* elements or run past the value, so the region is refused, also for an array
    # nested in a Structure.
    body = """
for n, attr, lie in ((3, "_type_", ctypes.c_char_p), (4, "_length_", 1000)):
    A = ctypes.c_uint64 * n  # a type of its own each time (ctypes caches c_uint64 * n)
    saved = getattr(A, attr)
    setattr(A, attr, lie)
    assert raises(RegionTypeError, RegionGuard, A)

    class S(ctypes.Structure):
        _fields_ = [("a", A)]

    assert raises(RegionTypeError, RegionGuard, S)
    setattr(A, attr, saved)
    RegionGuard(S).close()  # honest again: accepted
"""
    assert_survived(attack(body, timeout=60, watchdog=30))
