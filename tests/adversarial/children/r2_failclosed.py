"""Issue 18, class 2 (guard side): a system call that fails half-way must fail closed.

Every ``mprotect`` of a guard's entry and exit, and of ``isolated()``'s entry and exit, is
failed in turn by the shim (``params()``: errno, how many calls to let through first, how
many to fail: 1, or every later one).  After each failure:

- no page is more open than before the operation (``/proc/self/maps``);
- the core's bookkeeping matches: the guards on this thread's stack, each key's
  ``active_guards``, and the pages (the key's level, or narrower where ``_mixed`` says a
  region could not be put back);
- a narrowing mprotect (an exit, a put-back) that fails is retried (then with no access at
  all), so a single failure (``count`` 1) no longer fails an exit: it completes closed;
- when every try fails (``count`` -1), once the shim is disarmed the operation can be repeated
  (an exit that failed left its guard active) and everything ends where a clean run ends.

The mprotect backend only: on pku a switch is WRPKRU, which cannot fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

from pkeyguard import (
    GuardOrderError,
    MprotectError,
    PkeyGuard,
    PkeyPermissions,
    RegionGuard,
    _core,
    isolated,
)
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, RO, RW, params
from tests.support import perms_at

RANK = {"---p": 0, "r--p": 1, "rw-p": 2}
PROT = {0: "---p", 1: "r--p", 2: "rw-p"}


def arm() -> None:
    p = params()
    failinject.arm("mprotect", int(p["errno"]), skip=int(p["skip"]), count=int(p["count"]))


def disarm() -> int:
    """Disarm the shim; how many calls it failed."""
    failed = failinject.failed("mprotect")
    failinject.reset()
    return failed


class Keys:
    """``n`` keys created with ``base`` rights, ``regions`` one-page regions each."""

    def __init__(self, n: int, regions: int, base: PkeyPermissions = NA) -> None:
        assert MPROTECT
        self.keys = [PkeyGuard(base) for _ in range(n)]
        self.regions = [[RegionGuard(ctypes.c_uint64) for _ in range(regions)] for _ in range(n)]
        self.assocs = [
            [k.associate(r) for r in rs] for k, rs in zip(self.keys, self.regions, strict=True)
        ]

    def perms(self) -> list[list[str]]:
        return [[perms_at(r.address) for r in rs] for rs in self.regions]

    def check(self, label: str, before: list[list[str]]) -> None:
        """No page more open than ``before``; the bookkeeping matches the pages."""
        now = self.perms()
        for i, (k, was, is_) in enumerate(zip(self.keys, before, now, strict=True)):
            for b, n in zip(was, is_, strict=True):
                assert RANK[n] <= RANK[b], f"{label}: key {i} opened: {was} -> {is_}"
            level = PROT[k._effective_level]
            for n in is_:
                if getattr(
                    k, "_mixed", False
                ):  # a region that could not be put back: only ever narrower
                    assert RANK[n] <= RANK[level], f"{label}: key {i} {is_} wider than {level}"
                else:
                    assert n == level, f"{label}: key {i} pages {is_}, the core says {level}"
        stack = _core.thread_guards()
        for k in self.keys:
            assert k.active_guards == sum(1 for g in stack if g.key is k), (label, k)
        for g in stack:
            assert g.active, (label, g)

    def close(self) -> None:
        assert _core.thread_guards() == []
        for k, rs in zip(self.keys, self.regions, strict=True):
            for r in rs:
                r.close()
            k.close()


def case_guard_entry() -> None:
    """Entering a ReadWrite guard mprotects each of the key's three regions."""
    scene = Keys(1, 3)
    before = scene.perms()
    g = scene.assocs[0][1].set_access_rights(RW)
    arm()
    try:
        v = g.__enter__().mut_ref_guard()
    except MprotectError:
        v = None
    assert disarm() >= 1
    if v is None:  # refused: nothing changed
        assert not g.active and _core.thread_guards() == []
        scene.check("failed entry", before)
        g.__enter__()
        v = g.mut_ref_guard()
    else:
        # the undo failed too: the entry was completed instead, and the regions it could
        # not widen lag behind (never wider than the guard allows)
        assert g.active and getattr(scene.keys[0], "_mixed", False), scene.perms()
        scene.check("entry completed after a failed undo", [["rw-p"] * 3])
    v.value = 5  # the view's region is re-applied before the access (if it lagged)
    assert scene.perms()[0][1] == "rw-p"  # the others lag until the key's next switch
    scene.check("after the access", [["rw-p"] * 3])
    g.__exit__(None, None, None)
    assert scene.perms() == before
    scene.close()


def case_guard_exit() -> None:
    """Leaving a ReadWrite guard (nested in a ReadOnly one on the same key, or not) narrows
    each of the key's three regions; a failure keeps the guard active."""
    scene = Keys(1, 3)
    before = scene.perms()
    nested = bool(params()["nested"])
    outer = scene.assocs[0][0].set_access_rights(RO)
    inner = scene.assocs[0][2].set_access_rights(RW)
    if nested:
        outer.__enter__()
    inner.__enter__()
    inside = scene.perms()
    assert inside == [["rw-p"] * 3]
    arm()
    error: MprotectError | None = None
    try:
        inner.__exit__(None, None, None)
    except MprotectError as exc:
        error = exc
    assert disarm() >= 1
    want = [["r--p"] * 3] if nested else before
    if int(params()["count"]) == 1:  # retried: the exit completed, closed
        assert error is None and not inner.active, error
        scene.check("exit with one failure", want)
    else:
        assert error is not None, "the exit reported success although its mprotect failed"
        assert inner.active, "a guard whose exit failed must stay active (it was popped)"
        assert error.syscall == "mprotect" and "still active" in str(error), error
        scene.check("failed exit", inside)
        inner.__exit__(None, None, None)  # again, without the failure
    scene.check("exit again", want)
    assert scene.perms() == want
    if nested:
        outer.__exit__(None, None, None)
    assert scene.perms() == before and not getattr(scene.keys[0], "_mixed", False)
    scene.close()


def case_out_of_order_exit() -> None:
    """outer.__exit__ while two inner guards (two keys) are active unwinds them: a failure
    stops the unwinding at the guard that failed, which stays active with those below."""
    scene = Keys(2, 2)
    before = scene.perms()
    outer = scene.assocs[0][0].set_access_rights(RW)
    inner = scene.assocs[1][0].set_access_rights(RW)
    outer.__enter__()
    inner.__enter__()
    inside = scene.perms()
    arm()
    with contextlib.suppress(MprotectError, GuardOrderError):
        outer.__exit__(None, None, None)
        raise AssertionError("the out-of-order exit reported nothing")
    assert disarm() >= 1
    if int(params()["count"]) == 1:  # retried: the unwinding completed, closed
        assert not outer.active and _core.thread_guards() == []
        scene.check("out-of-order exit with one failure", before)
    else:
        scene.check("failed out-of-order exit", inside)
        assert outer.active
        # leaving again unwinds what is left
        with contextlib.suppress(GuardOrderError):
            outer.__exit__(None, None, None)
    assert _core.thread_guards() == []
    scene.check("out-of-order exit again", before)
    assert scene.perms() == before
    scene.close()


def case_isolated_entry() -> None:
    """isolated() over three keys created ReadWrite: each NoAccess entry narrows a key's two
    regions.  A failure leaves none of the block's guards entered."""
    scene = Keys(3, 2, base=RW)
    before = scene.perms()
    iso = isolated()
    arm()
    if int(params()["count"]) == 1:  # narrowing: retried, so the entry is made, closed
        iso.__enter__()
        assert disarm() >= 1
        assert scene.perms() == [["---p"] * 2] * 3
        iso.__exit__(None, None, None)
    else:
        with contextlib.suppress(MprotectError):
            iso.__enter__()
            raise AssertionError("isolated() was entered although an mprotect failed")
        assert disarm() >= 1
    assert _core.thread_guards() == []
    scene.check("failed isolated() entry", before)
    with isolated():
        assert scene.perms() == [["---p"] * 2] * 3
    for k in scene.keys:  # a region left closed by a failed put-back opens again
        assert not getattr(k, "_mixed", False)
    assert scene.perms() == before
    scene.close()


def case_isolated_exit() -> None:
    """Leaving isolated() widens the keys again.  A failure either keeps the block (the guard
    that failed, with those under it) active, and leaving again finishes it; or, when the
    put-back of a widening fails too, completes the exit with the regions it could not widen
    left closed (``_mixed``: never wider than the key allows), and the next switch opens
    them."""
    scene = Keys(3, 2, base=RW)
    before = scene.perms()
    iso = isolated()
    iso.__enter__()
    inside = scene.perms()
    assert inside != before
    arm()
    try:
        iso.__exit__(None, None, None)
        left = True
    except MprotectError:
        left = False
    assert disarm() >= 1
    # the keys whose guards were left are back to their own rights (as before the block),
    # the others stay closed
    scene.check("failed isolated() exit", before)
    if left:  # retried, or completed with regions left closed (``_mixed``)
        assert int(params()["count"]) == 1 or any(
            getattr(k, "_mixed", False) for k in scene.keys
        ), scene.perms()
    else:
        assert _core.thread_guards(), "the block must stay active"
        iso.__exit__(None, None, None)
    assert _core.thread_guards() == []
    scene.check("isolated() left", before)
    if any(getattr(k, "_mixed", False) for k in scene.keys):
        with isolated():  # the next switch on each key re-applies its level everywhere
            pass
    assert scene.perms() == before
    scene.close()


def case_thread_ends_inside_a_guard() -> None:
    """A thread ends inside a ReadWrite guard and every mprotect fails: its guard ends all
    the same (the thread is gone); the key records that its pages lag (``_mixed``), and the
    next switch on it closes them."""
    scene = Keys(1, 2)
    before = scene.perms()
    entered = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        g = scene.assocs[0][0].set_access_rights(RW)
        g.__enter__()
        entered.set()
        leave.wait()

    t = threading.Thread(target=worker)
    t.start()
    entered.wait()
    arm()
    leave.set()
    t.join()
    for _ in range(300):  # the thread's stack is dropped a moment after join()
        if scene.keys[0].active_guards == 0:
            break
        threading.Event().wait(0.01)
    assert disarm() >= 1
    k = scene.keys[0]
    assert k.active_guards == 0
    assert getattr(k, "_mixed", False) and k._effective_level == 0, (
        "the pages lag and the core must say so"
    )
    with scene.assocs[0][1].set_access_rights(NA):  # the next switch
        pass
    assert not getattr(k, "_mixed", False)
    assert scene.perms() == before
    scene.close()


def case_view_on_a_mixed_key() -> None:
    """An exit fails, and putting back one region fails too: it stays narrower than the
    still-active guard allows.  A view access then re-applies first, or refuses; never a
    fault."""
    scene = Keys(1, 2)
    g = scene.assocs[0][1].set_access_rights(RW)
    g.__enter__()
    v = g.mut_ref_guard()
    v.value = 7
    failinject.arm("mprotect", int(params()["errno"]), skip=1, count=-1)
    with contextlib.suppress(MprotectError):
        g.__exit__(None, None, None)
    assert g.active
    assert getattr(scene.keys[0], "_mixed", False), scene.perms()
    with contextlib.suppress(MprotectError):
        v.value = 8  # refused while the region cannot be re-opened
        raise AssertionError("a view wrote while its region was narrower than its guard")
    assert disarm() >= 1
    v.value = 9  # its own region re-applied, then written
    assert v.value == 9 and scene.perms()[0][1] == "rw-p"
    g.__exit__(None, None, None)
    scene.close()
