"""Class 9: the cyclic GC at threshold 1 never deadlocks a library call (the child side of
test_c09_gc_reentrancy.py; the forced collections are in ``r2_gc_inside_calls``)."""

from __future__ import annotations

import gc
import os
import random
import sys
from types import FrameType
from typing import Any

import pkeyguard
from pkeyguard import PkeyGuard, RegionGuard, Secret
from tests.adversarial.childlib import assert_clean, params, snapshot

PKG = os.path.dirname(pkeyguard.__file__) + os.sep


def case_gc_threshold_one_with_cyclic_garbage() -> None:
    p = params()
    inside = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        # a collection that starts while a frame of pkeyguard is on the stack
        if phase == "start":
            frame: FrameType | None = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename.startswith(PKG):
                    inside[0] += 1
                    return
                frame = frame.f_back

    rnd = random.Random(p["seed"])
    snap = snapshot()
    keep = Secret(8)  # keeps the shared secrets key alive between rounds
    old_gen: list[list[object]] = []
    gc.callbacks.append(on_gc)
    gc.set_threshold(1, 1, 1)
    try:
        for round_ in range(p["rounds"]):
            # Young and old garbage: cycles that survive a few collections before they die.
            s = Secret.from_bytes(bytearray(b"cyclic secret"))
            cyc: list[object] = [s, [], {}]
            cyc.append(cyc)
            old_gen.append(cyc)
            k = PkeyGuard()
            r = RegionGuard(64)
            k.associate(r)
            cyc2: list[object] = [r, k]
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
