"""Attack round two, stuck guards (F1 follow-up): a guard whose exit failed stays active,
marked stuck, and the library retries it.  Its block is over, so it is in nobody's 'with':

- C1: an outer block (a guard, ``isolated()`` or ``reveal()``) left after an inner guard or
  ``reveal()`` got stuck inside it retries the stuck one and completes; it never raises
  ``GuardOrderError`` (nothing was exited out of order), and if the retry still fails it
  raises ``MprotectError`` with the guards still active (fail closed).
- C4: ``Secret.close()`` (and the finalizer) inside a guard entered after a stuck
  ``reveal()``/``hmac()`` ends that stuck guard although it is not on top of the stack, then
  wipes and unmaps; the later guard keeps working and its exit leaves everything closed.
- The core's bookkeeping for a stuck guard taken out of the middle of the stack: same-key
  guards above it inherit what it saved, so their exits restore the right level.

Mprotect backend only (on pku an exit is a WRPKRU, which cannot fail).  ``params()`` as the
cases say.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
from typing import Any

from pkeyguard import (
    GuardOrderError,
    MprotectError,
    PkeyGuard,
    RegionGuard,
    Secret,
    _core,
    isolated,
)
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, RO, RW, params
from tests.support import perms_at

SOURCE = b"TOPSECRET-" * 4


def fail_from_now() -> None:
    """Fail every later core mprotect (the exit's and all its retries)."""
    failinject.arm("mprotect", errno.ENOMEM, count=-1)


def disarm() -> None:
    failed = failinject.failed("mprotect")
    failinject.reset()
    assert failed >= 1, "the shim failed no mprotect: the attack did not happen"


def no_guards(label: str) -> None:
    assert _core.thread_guards() == [], f"{label}: guards left: {_core.thread_guards()}"


def closed(address: int, label: str) -> None:
    perms = perms_at(address)
    assert perms == "" or perms[:3] == "---", f"{label}: {perms} (open to every thread)"


def case_outer_exit_retries_stuck() -> None:
    """``outer`` (guard, isolated, reveal) around ``inner`` (other, same, reveal) whose exit
    fails every try; ``retry`` ok: the outer exit completes; fails: MprotectError, and the
    next exit that completes on the thread ends them all."""
    assert MPROTECT
    outer, inner, retry = params()["outer"], params()["inner"], params()["retry"]
    k1, r1 = PkeyGuard(NA), RegionGuard(ctypes.c_uint64)
    a1 = k1.associate(r1)
    k2, r2 = PkeyGuard(NA), RegionGuard(ctypes.c_uint64)
    a2 = k2.associate(r2)
    outer_secret = Secret.from_bytes(bytearray(SOURCE))
    inner_secret = Secret.from_bytes(bytearray(SOURCE))
    outer_cm: Any = {
        "guard": lambda: a1.set_access_rights(RW),
        "isolated": lambda: isolated(allow=[k1, k2]),
        "reveal": outer_secret.reveal,
    }[outer]()
    inner_cm: Any = {
        "other": lambda: a2.set_access_rights(RO),
        "same": lambda: a1.set_access_rights(RO),
        "reveal": inner_secret.reveal,
    }[inner]()
    outer_error: BaseException | None = None
    try:
        with outer_cm:
            try:
                with inner_cm:
                    fail_from_now()
            except MprotectError as exc:
                assert exc.syscall == "mprotect", exc
            else:
                raise AssertionError("the inner exit did not fail")
            assert len(_core.thread_guards()) >= 2, "the inner guard is not stuck"
            if retry == "ok":
                disarm()
    except (MprotectError, GuardOrderError) as exc:
        outer_error = exc
    if retry == "ok":
        assert outer_error is None, f"the outer exit raised {outer_error!r}"
    else:
        assert type(outer_error) is MprotectError, f"the outer exit raised {outer_error!r}"
        assert _core.thread_guards(), "guards ended although their exit failed"
        disarm()
        with a2.set_access_rights(RO):  # the next exit that completes ends them
            pass
    no_guards("after the outer block")
    for address, label in ((r1.address, "r1"), (r2.address, "r2")):
        assert perms_at(address)[:3] == "---", f"{label}: {perms_at(address)}"
    closed(outer_secret.address, "outer secret")
    closed(inner_secret.address, "inner secret")
    assert k1.active_guards == 0 and k2.active_guards == 0
    outer_secret.close()
    inner_secret.close()
    for assoc, key, region in ((a1, k1, r1), (a2, k2, r2)):
        assoc.disassociate()
        key.close()
        region.close()


def _stuck_op(sec: Secret, op: str) -> None:
    """Leave a guard of ``op`` on ``sec`` stuck (every mprotect of its exit fails)."""
    if op == "reveal":
        try:
            with sec.reveal():
                fail_from_now()
        except MprotectError:
            pass
        else:
            raise AssertionError("the reveal() exit did not fail")
    else:
        calls = failinject.calls("mprotect")
        failinject.arm("mprotect", errno.ENOMEM, skip=1, count=-1)  # the entry passes
        try:
            sec.hmac(b"message")
        except MprotectError:
            pass
        else:
            raise AssertionError(f"hmac() did not fail ({failinject.calls('mprotect') - calls})")
    disarm()
    assert len(_core.thread_guards()) == 1, "no stuck guard"
    assert perms_at(sec.address)[:3] == "r--", perms_at(sec.address)


def case_close_under_later_guard() -> None:
    """A stuck ``op`` (reveal, hmac) guard, then a guard on another key; inside it the
    secret is closed (``end`` close) or dropped (``end`` drop): it is ended, wiped and
    unmapped there, and the later guard is left normally."""
    assert MPROTECT
    op, end = params()["op"], params()["end"]
    key, region = PkeyGuard(NA), RegionGuard(ctypes.c_uint64)
    assoc = key.associate(region)
    sec = Secret.from_bytes(bytearray(SOURCE))
    address = sec.address
    _stuck_op(sec, op)
    with assoc.set_access_rights(RW) as g:
        if end == "close":
            sec.close()
        else:
            del sec
            gc.collect()
        assert perms_at(address) == "", f"the secret is still mapped: {perms_at(address)}"
        assert len(_core.thread_guards()) == 1, _core.thread_guards()
        g.mut_ref_guard().value = 7  # the later guard still grants its rights
        assert perms_at(region.address)[:3] == "rw-", perms_at(region.address)
    no_guards("after the later guard")
    assert perms_at(region.address)[:3] == "---", perms_at(region.address)
    assert key.active_guards == 0
    assoc.disassociate()
    key.close()
    region.close()


def case_stuck_removed_from_middle() -> None:
    """The core's bookkeeping: a stuck guard under a later guard on the SAME key (``below``:
    none, or a ReadOnly guard under the stuck one) is ended by ``_end_stuck`` from the
    middle; the later guard's exit then restores the level below the stuck one, not the
    stuck one's (the mprotect backend's per-level counts and the same-key links)."""
    assert MPROTECT
    below = params()["below"]
    key, region = PkeyGuard(NA), RegionGuard(ctypes.c_uint64)
    assoc = key.associate(region)
    with contextlib.ExitStack() as stack:
        if below == "ro":
            stack.enter_context(assoc.set_access_rights(RO))
        stuck = assoc.set_access_rights(RW)
        try:
            with stuck:
                fail_from_now()
        except MprotectError:
            pass
        disarm()
        assert stuck.active, "the guard is not stuck"
        with assoc.set_access_rights(NA):
            assoc._end_stuck(False)  # pyright: ignore[reportAttributeAccessIssue]
            assert not stuck.active, "the stuck guard under a later one was not ended"
            assert key.active_guards == (2 if below == "ro" else 1), key.active_guards
            assert perms_at(region.address)[:3] == "---", perms_at(region.address)
        want = "r--" if below == "ro" else "---"
        assert perms_at(region.address)[:3] == want, f"{perms_at(region.address)} not {want}"
        assert stuck.__exit__(None, None, None) is False  # its failed exit was completed
    no_guards("after the blocks")
    assert perms_at(region.address)[:3] == "---", perms_at(region.address)
    assert key.active_guards == 0
    # the key's links still work: another block on it, on this thread
    with assoc.set_access_rights(RO):
        assert perms_at(region.address)[:3] == "r--"
    assert perms_at(region.address)[:3] == "---"
    assoc.disassociate()
    key.close()
    region.close()
