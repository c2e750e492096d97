"""H2: a recycled guard keeps the previous object's GC 'finalized' bit, so a __del__ set on
a guard class never runs for it.  The unit suite (test_a_finalizer_added_to_a_guard_class_
still_runs) promises that a __del__ set on the class later still runs.

Root cause (_core.c): guard_class_dealloc() calls PyObject_CallFinalizerFromDealloc(), which
sets the finalized bit in the GC header (_gc_prev); PyObject_GC_UnTrack() keeps that bit, and
guard_recycle() keeps the memory once tp_finalize is NULL again.  guard_alloc() reuses it
with memset() of the object body only and PyObject_GC_Track(), which also keeps the bit, so
the 'new' guard counts as already finalized.  (subtype_dealloc never recycles, so CPython
never meets this.)"""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, attack

_SCENE = """
region = RegionGuard(ctypes.c_uint32)
assoc = PkeyGuard().associate(region)
"""

_FINALIZED = {
    # A one-shot finalizer: it removes itself, so the guard it ran on is recycled.
    "one-shot __del__": """
def once(self):
    del pkeyguard.WriteGuard.__del__
pkeyguard.WriteGuard.__del__ = once
g = assoc.set_access_rights(RW)
del g
""",
    # A finalizer that resurrects; the resurrected guard is dropped after __del__ is gone.
    "resurrecting __del__": """
keep = []
pkeyguard.WriteGuard.__del__ = lambda self: keep.append(self)
g = assoc.set_access_rights(RW)
del g
del pkeyguard.WriteGuard.__del__
keep.clear()
""",
}


@pytest.mark.parametrize("how", sorted(_FINALIZED))
def test_a_fresh_guard_from_recycled_memory_still_runs_the_class_finalizer(how: str) -> None:
    body = (
        _SCENE
        + _FINALIZED[how]
        + """
seen = []
pkeyguard.WriteGuard.__del__ = lambda self: seen.append(self.rights)
fresh = assoc.set_access_rights(RW)
del fresh
del pkeyguard.WriteGuard.__del__
assert seen == [RW], f"__del__ of a fresh guard did not run: seen={seen!r}"
"""
    )
    assert_survived(attack(body, timeout=60, watchdog=30))
