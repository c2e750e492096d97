"""Issue 18, class 7: costs that must not grow with the number of keys, as counts.

``_core._walk_steps()`` counts the guards the core visits while looking for a thread's guards
on a key (other threads' outermost guards on it, and this thread's chain of guards on it).
Nothing here is timed.  With ``params()["keys"]`` other keys open, a view access inside
``isolated(allow=[k])`` visits none and an entry on ``k`` inside it a fixed few (the old core
walked every other key's guard for each), and ``isolated()`` visits a fixed few per key (the
old core walked this thread's whole, growing stack for each of its entries).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pkeyguard import AssociatedRegion, PkeyGuard, RegionGuard, _core, isolated
from tests.adversarial.childlib import NA, RO, RW, params


def steps() -> int:
    return _core._walk_steps()


@contextmanager
def many_keys() -> Iterator[tuple[list[PkeyGuard], PkeyGuard, AssociatedRegion[ctypes.c_uint32]]]:
    """``params()["keys"]`` other keys, and ``key`` associated with a ``c_uint32`` region; another
    thread holds a ReadOnly guard on ``key`` for the block (its guards are visited, never the
    other keys')."""
    n = int(params()["keys"])
    others = [PkeyGuard(NA) for _ in range(n)]
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    held = threading.Event()
    done = threading.Event()

    def other_thread() -> None:
        with assoc.set_access_rights(RO):
            held.set()
            done.wait()

    t = threading.Thread(target=other_thread)
    t.start()
    held.wait()
    try:
        yield others, key, assoc
    finally:
        done.set()
        t.join()
        assoc.disassociate()
        region.close()
        key.close()
        for k in others:
            k.close()


def case_view_access_does_not_grow_with_keys() -> None:
    with many_keys() as (others, key, assoc), assoc.set_access_rights(RW) as g:
        n = len(others)
        v = g.mut_ref_guard()
        with isolated(allow=[key]) as closed:
            assert len(closed) == n, len(closed)
            # the attack's setting: n guards entered after the view's guard, on this thread
            assert len(_core.thread_guards()) == n + 1
            before = steps()
            for i in range(1000):
                v.value = i
                assert v.value == i
            access = steps() - before
            before = steps()
            with assoc.set_access_rights(RO) as inner:
                nested = steps() - before
                assert inner.ref_guard().value == 999
                before = steps()
                for _ in range(100):
                    _ = v.value  # reads allowed under the inner ReadOnly guard
                nested_access = steps() - before
        assert access == 0, f"1000 view accesses visited {access} guards with {n} keys"
        assert nested_access == 0, f"100 nested reads visited {nested_access} guards"
        # on this key: the other thread's guard and this thread's guard, at most twice each
        assert nested <= 4, f"an entry visited {nested} guards with {n} keys"


def case_isolated_does_not_grow_with_keys() -> None:
    with many_keys() as (others, _key, assoc), assoc.set_access_rights(RW):
        n = len(others)
        before = steps()
        with isolated() as closed:
            entry = steps() - before
            assert len(closed) == n + 1, len(closed)
            assert len(_core.thread_guards()) == n + 2
        # a fixed few per key: the other thread's guard and this thread's on `key`, and on
        # pku a look at the pool's owners per entry; never the keys entered before
        assert entry <= 4 * n + 8, f"isolated() visited {entry} guards for {n} keys"
