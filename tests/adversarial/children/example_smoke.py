"""The runner's own check: a case that passes, one that fails an assertion, one that dies."""

from __future__ import annotations

import ctypes
import os
import signal

from pkeyguard import PkeyGuard, RegionGuard
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
