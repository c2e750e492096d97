"""The runner's own check: a case that passes, one that fails an assertion, one that dies."""

from __future__ import annotations

import ctypes
import errno
import os
import signal

from pkeyguard import MprotectError, PkeyGuard, RegionGuard
from tests import failinject
from tests.adversarial.childlib import NA, RW, assert_clean, params, snapshot


def case_clean_guard_block() -> None:
    snap = snapshot()
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard().value = params()["value"]
        assoc.disassociate()
    assert_clean(snap, "smoke")


def case_assertion_fails() -> None:
    raise AssertionError("this case fails on purpose")


def case_dies_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def case_failinject_fails_a_core_mprotect() -> None:
    # The shim fails the core's next mprotect: a guard entry on the mprotect backend must
    # report it (MprotectError) instead of opening the region; the interpreter's own
    # allocations were not counted.
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    failinject.arm("mprotect", errno.ENOMEM)
    try:
        with assoc.set_access_rights(RW):
            raise AssertionError("the guard was entered although its mprotect failed")
    except MprotectError as exc:
        assert exc.errno == errno.ENOMEM, exc
    assert failinject.failed("mprotect") == 1
    failinject.reset()
    assoc.disassociate()
    key.close()
    region.close()
