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
import gc
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


class _Closer:
    """Garbage in a cycle whose finalizer closes a key: freed at the collector's next run."""

    def __init__(self, key: PkeyGuard, fired: list[int]) -> None:
        self.me = self
        self.key = key
        self.fired = fired

    def __del__(self) -> None:
        self.key.close()
        self.fired.append(1)


def case_isolated_counts_again_after_a_finalizer_closes_a_key() -> None:
    """isolated() counts the open keys while it makes their guards (one pass less over the
    keys): a finalizer run by one of those allocations that closes a key already counted must
    make it count again, so that the block closes, records and hands out exactly the keys
    still open.  The collector fires at each allocation in turn (thresholds 1 .. n + 8)."""
    n = int(params()["keys"])
    fired: list[int] = []
    for threshold in range(1, n + 9):
        keys = [PkeyGuard(NA) for _ in range(n)]
        gc.collect()
        gc.disable()
        _Closer(keys[0], fired)
        before = len(fired)
        gc.set_threshold(threshold)
        gc.enable()
        try:
            with isolated() as closed:
                ran = len(fired) - before
                gc.set_threshold(700)
                stack = _core.thread_guards()
                assert all(g.active for g in stack)
                if ran:
                    assert keys[0].closed
                    assert keys[0] not in closed, threshold
                    assert len(closed) == n - 1 and len(stack) == n - 1, (threshold, len(closed))
                else:
                    assert len(closed) == n and len(stack) == n, (threshold, len(closed))
                assert set(map(id, closed)) == {id(g.key) for g in stack}
        finally:
            gc.set_threshold(700)
            gc.collect()
        assert not _core.thread_guards()
        for k in keys:
            if not k.closed:
                k.close()
    # the finalizer ran inside isolated() for most thresholds (not only before or after it)
    assert len(fired) >= n, len(fired)
