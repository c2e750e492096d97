"""Class 9: the cyclic GC collecting a Secret, region or key while the same thread is inside
Secret(), PkeyGuard(), key.associate(), region.close(), ... never deadlocks.

The collection is forced at the worst moment by code the library calls in the middle of
its work (``children/r2_gc_inside_calls.py``), and provoked statistically with
``gc.set_threshold(1, 1, 1)``.  A hang ends the child through
the watchdog with every thread's traceback.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, attack, run_case

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


_THRESHOLD = """
import random

PKG = os.path.dirname(pkeyguard.__file__) + os.sep
inside = [0]


def on_gc(phase, info):
    # a collection that starts while a frame of pkeyguard is on the stack
    if phase == "start":
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.startswith(PKG):
                inside[0] += 1
                return
            frame = frame.f_back


rnd = random.Random(PARAMS["seed"])
snap = snapshot()
keep = Secret(8)  # keeps the shared secrets key alive between rounds
old_gen = []
gc.callbacks.append(on_gc)
gc.set_threshold(1, 1, 1)
try:
    for round_ in range(PARAMS["rounds"]):
        # Young and old garbage: cycles that survive a few collections before they die.
        s = Secret.from_bytes(bytearray(b"cyclic secret"))
        cyc = [s, [], {}]
        cyc.append(cyc)
        old_gen.append(cyc)
        k = PkeyGuard()
        r = RegionGuard(64)
        k.associate(r)
        cyc2 = [r, k]
        cyc2.append(cyc2)
        old_gen.append(cyc2)
        del s, cyc, r, k, cyc2
        while len(old_gen) > rnd.randint(0, 6):
            old_gen.pop(rnd.randrange(len(old_gen)))
        if round_ % 250 == 0:
            print("round", round_, flush=True)
        step = rnd.randrange(5)
        if step == 0:
            Secret(16).close()
        elif step == 1:
            Secret.from_chunks([b"c" * 100, b"d" * 5000]).close()
        elif step == 2:
            region = RegionGuard(64)
            key = PkeyGuard()
            key.associate(region)
            region.close()
            key.close()
        elif step == 3:
            with keep.reveal() as b:
                bytes(b)
        else:
            x = Secret.from_bytes(bytearray(b"z" * 30))
            x.close()
finally:
    old_gen.clear()
    gc.set_threshold(700, 10, 10)
    gc.callbacks.remove(on_gc)
keep.close()
assert_clean(snap, "gc threshold 1")
print("collections inside pkeyguard:", inside[0], flush=True)
assert inside[0] > 0, "no collection started inside a library call"
"""


def test_gc_threshold_one_with_cyclic_garbage() -> None:
    """Class 9 (seeded stress): gc.set_threshold(1, 1, 1) while secrets, keys and regions in
    reference cycles die at random moments between Secret(), from_chunks(), from_bytes(),
    associate(), close() and reveal(): no deadlock, nothing leaks.  (Statistical: the old
    code deadlocks only when a collection happens to fall inside a locked section; the
    child asserts that collections did start inside library calls.)"""
    child = attack(_THRESHOLD, params={"rounds": 1500, "seed": 2}, timeout=90, watchdog=15)
    assert_survived(child)
