"""Class 8 (issue 18): the number of a key created with initial rights ("pinned") must not go
to a later key while a thread may still hold rights to it.

``pkey_alloc(0, rights)`` and the pinned key's creation give rights to the creating thread
only; a thread started while the key exists copies its creator's PKRU.  Closing the key
closes the number in the closing thread only.  So after ``close()`` on another thread, the
creator and the threads it started still have the number open, and a later pinned key that
took the same number would be writable by them, outside any guard, for good.

Each case plays it in the simulated pool (``MODE_SIM``: the pku backend's pool with a
thread-local PKRU; ``_sim_set_pkru`` plays the CPU's copy at thread creation), or on the pku
backend itself where ``params()["mode"] == "pku"``.  The attack is asserted to have happened
(the attacker still holds the old number open after the close); what must hold is that the
attacker has no rights to the new key's number.  tests/hw/test_virtual_keys.py makes the
raw writes on real PKU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, _core
from pkeyguard._backend import SIMULATED
from tests.adversarial.childlib import NA, RO, RW, params

CLOSED = 1  # access-disable


def _sim() -> bool:
    return bool(params().get("mode", "sim") == "sim")


def new_key(rights: PkeyPermissions = NA) -> PkeyGuard:
    if _sim():
        return SIMULATED.new_key(PkeyGuard, rights)
    return PkeyGuard(rights)


def pkru() -> int:
    return _core._sim_pkru() if _sim() else _core.rdpkru()


def inherit(value: int) -> None:
    """What the CPU does for a thread started now (the sim starts threads closed)."""
    if _sim():
        _core._sim_set_pkru(value)


def bits(number: int | None, value: int | None = None) -> int:
    assert number is not None
    return ((pkru() if value is None else value) >> (2 * number)) & 3


def on_new_thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(60)
    assert out, "the thread did not finish"
    return out[0]


def writable(b: int) -> bool:
    return b == 0


def case_the_creator_thread_gets_no_rights_to_a_later_key() -> None:
    """Thread C creates key x ReadWrite (its number open in C only); the main thread closes
    x; thread B creates y ReadOnly.  C must have y's number closed."""
    x_made, y_made, checked = threading.Event(), threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def creator() -> None:
        x = new_key(RW)
        box["x"], box["n"] = x, x.hardware_key
        box["at_creation"] = bits(x.hardware_key)
        x_made.set()
        assert y_made.wait(60)
        box["old"] = bits(box["n"])  # the attack: the creator still holds x's number open
        box["new"] = bits(box["y"].hardware_key)
        checked.set()

    t = threading.Thread(target=creator)
    t.start()
    assert x_made.wait(60)
    box["x"].close()  # closes x's number in this thread only
    box["y"] = on_new_thread(lambda: new_key(RO))
    y_made.set()
    assert checked.wait(60)
    t.join(60)
    y = box["y"]
    try:
        assert box["at_creation"] == 0 and box["old"] == 0, f"attack did not happen: {box}"
        assert y.hardware_key is not None
        reused = y.hardware_key == box["n"]
        assert box["new"] == CLOSED, (
            f"the creator thread of closed key x holds rights {box['new']} to y's number "
            f"{y.hardware_key} (x's was {box['n']}, reused={reused})"
        )
    finally:
        y.close()


def case_an_inheriting_thread_gets_no_rights_to_a_later_key() -> None:
    """The main thread creates x ReadWrite and starts thread U (U copies its PKRU: x's number
    open), then closes x.  Thread B creates y ReadOnly.  U must have y's number closed."""
    x = new_key(RW)
    n = x.hardware_key
    started, y_made, checked = threading.Event(), threading.Event(), threading.Event()
    inherited = pkru()
    box: dict[str, Any] = {}

    def heir() -> None:
        inherit(inherited)
        box["at_start"] = bits(n)
        started.set()
        assert y_made.wait(60)
        box["old"] = bits(n)
        box["new"] = bits(box["y"].hardware_key)
        checked.set()

    u = threading.Thread(target=heir)
    u.start()
    assert started.wait(60)
    x.close()
    box["y"] = on_new_thread(lambda: new_key(RO))
    y_made.set()
    assert checked.wait(60)
    u.join(60)
    y = box["y"]
    try:
        assert box["at_start"] == 0 and box["old"] == 0, f"attack did not happen: {box}"
        assert box["new"] == CLOSED, (
            f"a thread started while x existed holds rights {box['new']} to y's number "
            f"{y.hardware_key} (x's was {n})"
        )
    finally:
        y.close()


def case_an_heir_that_entered_a_guard_before_the_close_gets_no_rights() -> None:
    """As above, but U enters a guard (on another key) while x is still open: pkeyguard has
    seen U, after x was made.  That proves nothing about x's number: U must still block its
    reuse until U enters a guard again after the close."""
    other = new_key()
    region = RegionGuard(8)
    assoc = other.associate(region)
    x = new_key(RW)
    n = x.hardware_key
    inherited = pkru()
    started, y_made, checked = threading.Event(), threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def heir() -> None:
        inherit(inherited)
        with assoc.set_access_rights(RO):
            pass
        box["old_before"] = bits(n)
        started.set()
        assert y_made.wait(60)
        box["old"] = bits(n)
        box["new"] = bits(box["y"].hardware_key)
        checked.set()

    u = threading.Thread(target=heir)
    u.start()
    assert started.wait(60)
    x.close()
    box["y"] = on_new_thread(lambda: new_key(RO))
    y_made.set()
    assert checked.wait(60)
    u.join(60)
    y = box["y"]
    try:
        assert box["old_before"] == 0 and box["old"] == 0, f"attack did not happen: {box}"
        assert box["new"] == CLOSED, (
            f"thread holds rights {box['new']} to y's number {y.hardware_key} (x's was {n})"
        )
    finally:
        y.close()
        assoc.disassociate()
        other.close()
        region.close()


def case_the_forking_thread_stays_the_creator_in_the_child() -> None:
    """The main thread creates x ReadWrite and forks.  In the child (one thread: the
    forking one, x's creator, with a new thread id) another thread closes x and creates y
    ReadOnly: the child's main thread must have y's number closed."""
    x = new_key(RW)
    n = x.hardware_key
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            box: dict[str, Any] = {}

            def closer() -> None:
                x.close()
                box["y"] = new_key(RO)

            on_new_thread(closer)
            y = box["y"]
            old, new = bits(n), bits(y.hardware_key)
            print(f"CHILD old={old} new={new} n={n} y={y.hardware_key}", flush=True)
            status = 0 if old == 0 and new == CLOSED else 3
            y.close()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"the fork child died: {status:#x}"
    assert os.WEXITSTATUS(status) == 0, (
        f"in the fork child, the creator thread holds rights to y's number "
        f"(exit {os.WEXITSTATUS(status)})"
    )
    x.close()
