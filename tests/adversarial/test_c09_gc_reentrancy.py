"""Class 9: the cyclic GC collecting a Secret, region or key while the same thread is inside
Secret(), PkeyGuard(), key.associate(), region.close(), ... never deadlocks.

The collection is forced at the worst moment by code the library calls in the middle of
its work (``children/r2_gc_inside_calls.py``), and provoked statistically with
``gc.set_threshold(1, 1, 1)`` (``children/c09_gc_reentrancy.py``).  A hang ends the child through
the watchdog with every thread's traceback.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

OPS = [
    "Secret.from_chunks()",
    "Secret.from_stream()",
    "Secret.from_writer()",
    "Secret.hmac()",
    "RegionGuard.close()",
    "Secret.close()",
    "associate()/guards/reveal() at gc threshold 1",
]


@pytest.mark.parametrize("op", OPS)
def test_gc_forced_inside_library_calls(op: str) -> None:
    """Class 9: code the library calls in the middle of its work (an iterator, a readinto, a
    writer, a digest constructor, an unmap hook; the core's own allocations at gc threshold
    1) runs gc.collect() at each point in turn while secrets, regions and keys sit in
    reference cycles: nothing deadlocks, crashes or leaks.  The child asserts that
    collections really started inside the library (issue 18, class 13: the old version
    hooked name=, which is copied before use, so it never collected anything)."""
    child = run_case(
        "r2_gc_inside_calls",
        "case_gc_forced_inside_library_calls",
        params={"op": op, "max_points": 40},
        timeout=60,
        watchdog=20,
    )
    assert_survived(child)


def test_gc_threshold_one_with_cyclic_garbage() -> None:
    """Class 9 (seeded stress): gc.set_threshold(1, 1, 1) while secrets, keys and regions in
    reference cycles die at random moments between Secret(), from_chunks(), from_bytes(),
    associate(), close() and reveal(): no deadlock, nothing leaks.  (Statistical: the old
    code deadlocks only when a collection happens to fall inside a locked section; the
    child asserts that collections did start inside library calls.)"""
    child = run_case(
        "c09_gc_reentrancy",
        "case_gc_threshold_one_with_cyclic_garbage",
        params={"rounds": 1500, "seed": 2},
        timeout=90,
        watchdog=15,
    )
    assert_survived(child)
