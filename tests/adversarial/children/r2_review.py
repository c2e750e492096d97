"""Issue 18, review round (guard side): what a narrowing that failed leaves behind.

An exit's narrowing mprotect that fails twice falls back to no access at all, so the region
lags *narrower* than its key's level.  Everything that touches the pages afterwards must
know that:

- the wipe (``close()``, the wipe at interpreter exit) must not trust the key's level for a
  region that may lag: reading its canary or zeroing it directly would fault;
- the fallback must never drop a region below the target level while a buffer export
  (a ``memoryview``) of it is alive: that memoryview would fault; the narrowing fails instead;
- a view access on a key with lagging regions re-applies the level to the view's own region
  only (one mprotect, not one per region of the key), and refuses the access if that fails:
  putting other regions back is not its business, and must never leave its region narrower.

The mprotect backend only (``params()``: errno, and per case its knobs).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any

from pkeyguard import MprotectError, PkeyGuard, RegionGuard, allocator
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, RO, RW, params
from tests.support import perms_at


def _rights(address: int) -> str:
    """The region's rights in /proc/self/maps, without private/shared (memfd_secret: shared)."""
    return perms_at(address)[:3]


def _errno() -> int:
    return int(params()["errno"])


def _regions(n: int) -> tuple[PkeyGuard, list[RegionGuard[Any]], list[Any]]:
    assert MPROTECT
    key = PkeyGuard(NA)
    backing = str(params().get("backing", "mmap"))
    regions = [
        RegionGuard(ctypes.c_uint64, allocator=allocator.Secure(backing=backing))  # type: ignore[arg-type]
        for _ in range(n)
    ]
    return key, regions, [key.associate(r) for r in regions]


def case_wipe_after_a_double_failed_exit() -> None:
    """A ReadWrite exit back to ReadOnly fails twice on the first region, which falls back to
    no access: the key says ReadOnly, the region is ``---p``.  Closing that region (or the
    wipe at interpreter exit, with the ReadOnly guard still active) must wipe it without
    reading it directly."""
    key, regions, assocs = _regions(2)
    outer = assocs[1].set_access_rights(RO)
    inner = assocs[1].set_access_rights(RW)
    outer.__enter__()
    inner.__enter__()
    inner.mut_ref_guard().value = 5
    with assocs[0].set_access_rights(RW) as g0:
        g0.mut_ref_guard().value = 6  # both regions hold a value (and resident pages)
    failinject.arm("mprotect", _errno(), skip=0, count=2)
    inner.__exit__(None, None, None)  # completes: region 0 falls back to no access
    assert failinject.failed("mprotect") == 2
    failinject.reset()
    assert _rights(regions[0].address) == "---", _rights(regions[0].address)
    assert _rights(regions[1].address) == "r--"
    if params()["how"] == "close":
        regions[0].close()  # the wipe of a lagging region
        outer.__exit__(None, None, None)
        regions[1].close()
        key.close()
    # else: the wipe at interpreter exit finds the ReadOnly guard still active


def case_export_kept_across_a_failed_exit() -> None:
    """Thread A holds a memoryview of a region under a ReadOnly guard; thread B's ReadWrite
    exit narrows the key to ReadOnly and that mprotect fails twice: the region must keep its
    rights (the exit fails, B's guard stays active), never drop to no access under A."""
    key, regions, assocs = _regions(1)
    with assocs[0].set_access_rights(RW) as g:
        g.mut_ref_guard().value = 0x1122334455667788
    holding, read, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def reader() -> None:
        with assocs[0].set_access_rights(RO) as ro:
            mv = memoryview(ro.ref_guard())
            holding.set()
            assert read.wait(30)
            seen.append(mv.cast("B")[0])  # faults if the region went to no access
            mv.release()
        done.set()

    a = threading.Thread(target=reader, daemon=True)
    a.start()
    assert holding.wait(30)
    rw = assocs[0].set_access_rights(RW)
    rw.__enter__()
    failinject.arm("mprotect", _errno(), skip=0, count=2)
    error: MprotectError | None = None
    try:
        rw.__exit__(None, None, None)
    except MprotectError as exc:
        error = exc
    assert failinject.failed("mprotect") == 2
    failinject.reset()
    read.set()  # A reads through its memoryview now: a fault if the region lost its rights
    assert done.wait(30)
    a.join()
    assert seen == [0x88], seen
    assert _rights(regions[0].address) == "rw-", "a region with a live export lost its rights"
    assert error is not None and rw.active, "the exit must fail rather than drop below ReadOnly"
    rw.__exit__(None, None, None)  # again, without the failure
    assert _rights(regions[0].address) == "---"
    regions[0].close()
    key.close()


def _mixed_with_view(n: int, at: int) -> tuple[PkeyGuard, list[RegionGuard[Any]], Any, Any]:
    """A ReadWrite guard (with a view) on region ``at`` of ``n``, whose exit failed on the
    first region (twice): the others went to no access, the key stays ReadWrite, mixed."""
    key, regions, assocs = _regions(n)
    g = assocs[at].set_access_rights(RW)
    v = g.__enter__().mut_ref_guard()
    v.value = 7
    failinject.arm("mprotect", _errno(), skip=0, count=2)
    with contextlib.suppress(MprotectError):
        g.__exit__(None, None, None)
        raise AssertionError("the exit succeeded although its first region's mprotect failed")
    assert failinject.failed("mprotect") == 2
    failinject.reset()
    assert g.active and getattr(key, "_mixed", False)
    assert [_rights(r.address) for r in regions] == ["rw-"] + ["---"] * (n - 1)
    return key, regions, g, v


def case_view_settle_on_its_own_region() -> None:
    """The view's region (the last of three) lags at no access; the re-apply before an access
    fails (from its ``skip``-th mprotect on).  It must either open the view's own region or
    refuse the access: never return with the region still closed (a fault), never put other
    regions back to no access."""
    key, regions, g, v = _mixed_with_view(3, 2)
    skip = int(params()["skip"])
    failinject.arm("mprotect", _errno(), skip=skip, count=-1)
    refused = False
    try:
        v.value = 8
    except MprotectError as exc:
        refused = True
        assert exc.syscall == "mprotect", exc
    failed = failinject.failed("mprotect")
    failinject.reset()
    if skip == 0:
        assert refused and failed >= 1, (refused, failed)
    else:  # the view's own region is re-applied first: no failure reaches it
        assert not refused
    assert _rights(regions[0].address) == "rw-", "a re-apply narrowed another region"
    v.value = 9
    assert v.value == 9
    g.__exit__(None, None, None)
    assert [_rights(r.address) for r in regions] == ["---"] * 3
    assert not getattr(key, "_mixed", False)
    for r in regions:
        r.close()
    key.close()


def case_view_settle_is_one_mprotect() -> None:
    """On a key with eight regions, seven lagging, a view access re-applies its own region
    only: one mprotect, however many regions the key has (and none the next time)."""
    key, regions, g, v = _mixed_with_view(8, 5)
    failinject.reset()
    v.value = 1
    first = failinject.calls("mprotect")
    v.value = 2
    second = failinject.calls("mprotect") - first
    assert (first, second) == (1, 0), (first, second)
    g.__exit__(None, None, None)
    assert [_rights(r.address) for r in regions] == ["---"] * 8
    for r in regions:
        r.close()
    key.close()
