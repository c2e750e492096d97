"""The state machine of tests/unit/test_state_machine.py on the pku backend.

Same rules and invariants; the model switches to per-thread rights (each thread's PKRU bits,
compared with the whole register after every step) and checks the key tag of every region in
``/proc/self/smaps``.  Raw accesses are made only where the model says PKRU and the page rights
allow them, so a wrong model is a ``SEGV_PKUERR``.  The number of examples
follows HYPOTHESIS_PROFILE (tests/profiles.py; the guest emulates the CPU, so they are fewer).
"""

from __future__ import annotations

import ctypes
import threading

from hypothesis import HealthCheck, settings

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, _core
from tests.profiles import state_examples
from tests.unit.test_state_machine import (
    PkeyguardMachine,
    test_guard_of_an_ended_association_gives_no_view,
    test_protect_is_refused_while_a_guard_is_active,
)

__all__ = [
    "TestPkeyguardStateMachinePku",
    "test_a_closed_keys_number_waits_for_a_thread_that_may_hold_it",
    "test_guard_of_an_ended_association_gives_no_view",
    "test_protect_is_refused_while_a_guard_is_active",
]


class PkuMachine(PkeyguardMachine):
    def __init__(self) -> None:
        assert pkeyguard.backend().name == "pku", "tests/hw runs on the pku backend only"
        super().__init__()


TestPkeyguardStateMachinePku = PkuMachine.TestCase
TestPkeyguardStateMachinePku.settings = settings(
    max_examples=state_examples(guest=True),
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_a_closed_keys_number_waits_for_a_thread_that_may_hold_it() -> None:
    """A limit of PKU that the machine's model has to follow, and what the pool does about it.

    ``pkey_alloc`` sets the new key's rights in the calling thread only, and closing a key
    closes its number in the closing thread only.  A thread that had rights to a key number
    (here: inherited at creation from a key made ReadWrite) keeps them after the key closes.
    So the number of a closed key made with initial rights never goes to a virtual key, and
    goes to the next key made with initial rights only once no thread can still hold it
    (issue 18, class 8: before, that key got it, and the stale thread read its memory
    without a guard).  Here the stale thread has not entered a guard since: the new key gets
    another number, which the stale thread has closed.
    """
    old = PkeyGuard(PkeyPermissions.ReadWrite)
    number = old.hardware_key
    assert number is not None
    started = threading.Event()
    go = threading.Event()
    seen: list[object] = []

    def worker() -> None:  # started while `old` is open ReadWrite on the creating thread
        started.set()
        go.wait(10)
        try:
            seen.append(_core.rdpkru() >> (2 * number) & 3)  # the inherited bits: still open
            seen.append(virtual.current_rights())
            seen.append(pinned.current_rights())
        except BaseException as exc:  # pragma: no cover - reported below
            seen.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(10)
    old.close()
    with (
        RegionGuard(ctypes.c_uint32) as region,
        PkeyGuard(PkeyPermissions.NoAccess) as virtual,
    ):
        assert virtual.hardware_key not in (None, number), "a virtual key: never that number"
        with PkeyGuard(PkeyPermissions.ReadOnly) as pinned:
            assert pinned.hardware_key not in (None, number), "the number waits for the thread"
            pinned.associate(region)
            assert pinned.current_rights() is PkeyPermissions.ReadOnly  # this thread
            go.set()
            thread.join(10)
    assert seen == [0, PkeyPermissions.NoAccess, PkeyPermissions.NoAccess], seen
