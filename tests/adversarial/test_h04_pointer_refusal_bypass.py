"""H4 (pre-existing, not from issue 12; same root as H3): the pointer refusal of class 2 reads
the mutable class attribute `_type_`.  Setting `ctypes.c_char_p._type_ = "Q"` for the
duration of RegionGuard(S) (S a Structure with a c_char_p field) gets S accepted; ctypes still
treats the field as char*, so reading `view.contents.p` dereferences whatever the region holds:
SIGSEGV in views._Proxy.__getattr__ (getattr(scratch, name)).

Root cause: region._pointer_in() (and _classify(), H3) trust getattr(value_type, "_type_"),
a class attribute anyone can reassign after ctypes fixed the layout.  The format ctypes itself
fixed at class creation is memoryview(value_type()).format ("<z" for c_char_p, "<B" for the
relabelled c_uint8 of H3, whatever _type_ says now).

The child programs are ``children/h_pointer_refusal.py``.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_a_relabelled_char_pointer_field_is_still_refused() -> None:
    child = run_case(
        "h_pointer_refusal",
        "case_a_relabelled_char_pointer_field_is_still_refused",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_an_array_relabelled_after_the_region_was_made_reads_what_ctypes_stored() -> None:
    # The layout is checked when the region is made; a composite view must not trust the
    # array's _type_ and _length_ afterwards either: relabelling the element type as char*
    # would make a read dereference the region's bytes, and a longer _length_ would index
    # past the value.
    child = run_case(
        "h_pointer_refusal",
        "case_an_array_relabelled_after_the_region_was_made",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_an_array_relabelled_before_the_region_is_made_is_refused() -> None:
    # _type_ or _length_ no longer describe the array ctypes made: believing them would index
    # char* elements or run past the value, so the region is refused, also for an array
    # nested in a Structure.
    child = run_case(
        "h_pointer_refusal",
        "case_an_array_relabelled_before_the_region_is_made",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)
