"""Class 1: views convert every argument first, then check, then touch memory.

Hostile ``__index__`` / ``__int__`` / ``__bool__`` / ``__float__`` / ``__len__`` /
``__iter__`` (and ``__buffer__`` on 3.12+) objects, used as indices, slice bounds, assigned
values and sequences, exit the guard, enter a NoAccess or ReadOnly guard on the same key,
close the region or key, or raise, in the middle of the access.  The access must then raise
a pkeyguard error; it must never fault.  The child programs: children/c01_view_conversions.py
(the hostile objects: children/hostile.py).
"""

from __future__ import annotations

import sys

import pytest

from tests.adversarial.children import c01_view_conversions as child
from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("case", sorted(child.CASES))
def test_sabotaged_conversion_raises_instead_of_faulting(case: str) -> None:
    """Class 1: a conversion hook that exits the guard / enters a NoAccess or ReadOnly guard
    / closes the region makes the access raise a pkeyguard error (never a fault, never a
    plain TypeError from refusing to convert)."""
    assert_survived(
        run_case(
            "c01_view_conversions",
            "case_sabotaged_conversion",
            params={"case": case},
            timeout=60,
            watchdog=30,
        )
    )


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ needs Python 3.12")
@pytest.mark.parametrize("case", sorted(child.BUFFER_CASES))
def test_sabotaged_buffer_export_raises_instead_of_faulting(case: str) -> None:
    """Class 1 (3.12+): the assigned value's ``__buffer__`` exits the guard or enters a
    ReadOnly guard; the assignment raises a pkeyguard error."""
    assert_survived(
        run_case(
            "c01_view_conversions",
            "case_sabotaged_conversion",
            params={"case": case},
            timeout=60,
            watchdog=30,
        )
    )


def test_hunt_hostile_conversions() -> None:
    """Class 1 (hypothesis, in the child): random hostile objects in every conversion slot
    of byte, scalar and composite views, running random sabotage sequences; the access
    either succeeds while it is still allowed or raises (a pkeyguard error when the hook
    sabotaged a valid value), and never faults or leaves a guard behind."""
    child = run_case(
        "c01_view_conversions",
        "case_hunt",
        params={"examples": 300},
        timeout=150,
        watchdog=120,
    )
    assert_survived(child)
