"""Class 13: pkeyguard.faults tells the truth about its handler.  After
faulthandler.disable() (which puts back the handler faulthandler found, removing the
reporter chained above it) is_enabled() reports False, and enable() reinstalls the reporter,
whose report then appears on a fault."""

from __future__ import annotations

import signal

import pytest

from tests.adversarial.support import HYPOTHESIS, assert_died_with, assert_survived, attack

_STATE = """
import faulthandler
from pkeyguard import faults

faults.enable()
assert faults.is_enabled()
faulthandler.disable()
assert not faults.is_enabled(), "is_enabled() still True after faulthandler.disable()"
faults.enable()
assert faults.is_enabled()
faults.disable()
assert not faults.is_enabled()
"""


def test_is_enabled_false_after_faulthandler_disable() -> None:
    """Class 13: faults.enable(), then faulthandler.disable(): is_enabled() is False; enable()
    makes it True again; disable() False (the old flag stays True after faulthandler removed
    the handler)."""
    assert_survived(attack(_STATE, fault_handler=False, timeout=60, watchdog=30))


_MODEL = """
import faulthandler
from pkeyguard import faults


class Model:
    # SIGSEGV's handler as a stack of who installed what: "dfl", "fh", "ours".
    def __init__(self):
        self.current = "dfl"
        self.fh_on = False
        self.fh_prev = None

    def fh_enable(self):
        if not self.fh_on:
            self.fh_prev, self.current, self.fh_on = self.current, "fh", True

    def fh_disable(self):
        if self.fh_on:
            self.current, self.fh_on = self.fh_prev, False

    def enable(self):
        self.fh_enable()
        if self.current != "ours":
            self.ours_prev, self.current = self.current, "ours"

    def disable(self):
        self.current = self.ours_prev


@SETTINGS
@given(st.lists(st.sampled_from(["enable", "disable", "fh_enable", "fh_disable"]),
                max_size=12))
def hunt(ops):
    print("ops", ops, flush=True)
    model = Model()
    try:
        for op in ops:
            if op == "disable" and model.current != "ours":
                continue   # what disable() does once another handler replaced ours is open
            getattr(model, op)()
            {"enable": faults.enable, "disable": faults.disable,
             "fh_enable": faulthandler.enable, "fh_disable": faulthandler.disable}[op]()
            want = model.current == "ours"
            got = faults.is_enabled()
            assert got == want, f"after {op}: is_enabled() is {got}, the handler is {model.current}"
    finally:
        if faults.is_enabled():
            faults.disable()
        faulthandler.disable()


hunt()
"""


def test_hunt_enable_disable_sequences() -> None:
    """Class 13 (hypothesis, in the child): random sequences of faults.enable()/disable()
    and faulthandler.enable()/disable(); after each step is_enabled() says whether the
    reporter is the installed SIGSEGV handler (per a model of who installed what)."""
    child = attack(HYPOTHESIS + _MODEL, params={"examples": 150}, fault_handler=False, watchdog=60)
    assert_survived(child)


SEQUENCES = {
    "enable-fhdisable-enable": "faults.enable(); faulthandler.disable(); faults.enable()",
    "enable-disable-enable": "faults.enable(); faults.disable(); faults.enable()",
    "fhenable-enable-fhdisable-fhenable-enable": (
        "faulthandler.enable(); faults.enable(); faulthandler.disable(); "
        "faulthandler.enable(); faults.enable()"
    ),
}

_CRASH = """
import faulthandler
from pkeyguard import faults

region = RegionGuard(ctypes.c_uint64, name="reported")
key = PkeyGuard()
assoc = key.associate(region)
{sequence}
assert faults.is_enabled()
print("FAULTING", flush=True)
ctypes.c_uint64.from_address(region.address).value = 1
"""


@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
def test_reenabled_reporter_reports_the_fault(sequence: str) -> None:
    """Class 13: after a sequence that ends with faults.enable(), an access to a NoAccess
    region dies by SIGSEGV with the pkeyguard report naming the region (the old enable()
    does not reinstall the reporter faulthandler.disable() removed: no report)."""
    body = _CRASH.replace("{sequence}", SEQUENCES[sequence].replace("; ", "\n"))
    child = attack(body, fault_handler=False, marker=False, timeout=60, watchdog=30)
    assert_died_with(
        child,
        signal.SIGSEGV,
        "pkeyguard: protection fault: ",
        "region: 'reported (c_ulong)'",
    )
