"""Class 4: buffer exports honour the requested access and the thread's current rights.

A write view from an outer ReadWrite guard is asked for a writable buffer (struct.pack_into,
FileIO.readinto, os.readv, memoryview writes, ctypes from_buffer) while a ReadOnly guard on
the same key is entered inside: the request is refused (CPython's argument parsers turn a
refused writable buffer into TypeError, so TypeError counts as refused too), never a fault.
Entering a more restrictive guard on the key while a memoryview exported under a more
permissive one is held is refused with GuardStateError.  The child programs:
children/c04_buffer_exports.py.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

CHILD = "c04_buffer_exports"


@pytest.mark.parametrize(
    "op", ["pack_into", "readinto", "readv", "memoryview_write", "from_buffer", "slice_write"]
)
def test_writable_export_refused_under_inner_readonly_guard(op: str) -> None:
    """Class 4: a write view of an outer ReadWrite guard, asked for a writable buffer while a
    ReadOnly guard on the same key is active inside, is refused (the old core checks only
    read access for every export, hands out a writable buffer, and the write faults)."""
    child = run_case(
        CHILD,
        "case_writable_export_refused_under_inner_readonly_guard",
        params={"op": op},
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_every_export_refused_under_inner_noaccess_guard() -> None:
    """Class 4: under an inner NoAccess guard on the same key, every read and write export
    of the outer write view is refused (a property the old core already has)."""
    child = run_case(
        CHILD, "case_every_export_refused_under_inner_noaccess_guard", timeout=60, watchdog=30
    )
    assert_survived(child)


@pytest.mark.parametrize(
    ("outer", "inner"), [("RW", "RO"), ("RW", "NA"), ("RO", "NA"), ("RW", "isolated")]
)
def test_restrictive_guard_refused_while_memoryview_held(outer: str, inner: str) -> None:
    """Class 4: while this thread holds a memoryview exported under an active guard, entering
    a more restrictive guard on the same key (or isolated()) is refused with GuardStateError
    (any pkeyguard error for isolated()), the guard stack is unchanged and the memoryview
    keeps working; after release the restrictive guard can be entered."""
    child = run_case(
        CHILD,
        "case_restrictive_guard_refused_while_memoryview_held",
        params={"outer": outer, "inner": inner},
        watchdog=30,
    )
    assert_survived(child)


def test_permissive_and_other_key_guards_allowed_while_memoryview_held() -> None:
    """Class 4 (control): holding a memoryview does not block a more permissive or equal
    guard on the same key, nor any guard on another key (the old core allows these too)."""
    child = run_case(
        CHILD,
        "case_permissive_and_other_key_guards_allowed_while_memoryview_held",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_hunt_exports_under_guard_stacks() -> None:
    """Class 4 (hypothesis, in the child): random stacks of guards on one key, a read or
    write export through a view of any level: it succeeds exactly when the view allows the
    access and so does the thread's innermost guard on the key, and is refused otherwise;
    never a fault."""
    child = run_case(CHILD, "case_hunt", params={"examples": 200}, timeout=150, watchdog=120)
    assert_survived(child)
