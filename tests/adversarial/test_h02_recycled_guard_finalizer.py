"""H2: a recycled guard keeps the previous object's GC 'finalized' bit, so a __del__ set on
a guard class never runs for it.  The unit suite (test_a_finalizer_added_to_a_guard_class_
still_runs) promises that a __del__ set on the class later still runs.

Root cause (_core.c): guard_class_dealloc() calls PyObject_CallFinalizerFromDealloc(), which
sets the finalized bit in the GC header (_gc_prev); PyObject_GC_UnTrack() keeps that bit, and
guard_recycle() keeps the memory once tp_finalize is NULL again.  guard_alloc() reuses it
with memset() of the object body only and PyObject_GC_Track(), which also keeps the bit, so
the 'new' guard counts as already finalized.  (subtype_dealloc never recycles, so CPython
never meets this.)  The child program is ``children/h_recycled_guard.py``."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

_FINALIZED = ["one-shot __del__", "resurrecting __del__"]


@pytest.mark.parametrize("how", _FINALIZED)
def test_a_fresh_guard_from_recycled_memory_still_runs_the_class_finalizer(how: str) -> None:
    child = run_case(
        "h_recycled_guard",
        "case_a_fresh_guard_from_recycled_memory_still_runs_the_class_finalizer",
        params={"how": how},
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)
