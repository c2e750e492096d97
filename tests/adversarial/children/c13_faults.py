"""Class 13: pkeyguard.faults tells the truth about its handler (the child side of
test_c13_faults.py)."""

from __future__ import annotations

import ctypes
import faulthandler
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from pkeyguard import PkeyGuard, RegionGuard, faults
from tests.adversarial.childlib import hunt_settings, params


def case_is_enabled_false_after_faulthandler_disable() -> None:
    faults.enable()
    assert faults.is_enabled()
    faulthandler.disable()
    assert not faults.is_enabled(), "is_enabled() still True after faulthandler.disable()"
    faults.enable()
    assert faults.is_enabled()
    faults.disable()
    assert not faults.is_enabled()


class Model:
    """SIGSEGV's handler as a stack of who installed what: "dfl", "fh", "ours"."""

    def __init__(self) -> None:
        self.current = "dfl"
        self.fh_on = False
        self.fh_prev: str | None = None
        self.ours_prev: str | None = None

    def fh_enable(self) -> None:
        if not self.fh_on:
            self.fh_prev, self.current, self.fh_on = self.current, "fh", True

    def fh_disable(self) -> None:
        if self.fh_on:
            assert self.fh_prev is not None
            self.current, self.fh_on = self.fh_prev, False

    def enable(self) -> None:
        self.fh_enable()
        if self.current != "ours":
            self.ours_prev, self.current = self.current, "ours"

    def disable(self) -> None:
        assert self.ours_prev is not None
        self.current = self.ours_prev


CALLS: dict[str, Callable[[], object]] = {
    "enable": faults.enable,
    "disable": faults.disable,
    "fh_enable": faulthandler.enable,
    "fh_disable": faulthandler.disable,
}


def case_hunt_enable_disable_sequences() -> None:
    @hunt_settings()
    @given(st.lists(st.sampled_from(sorted(CALLS)), max_size=12))
    def hunt(ops: list[str]) -> None:
        print("ops", ops, flush=True)
        model = Model()
        try:
            for op in ops:
                if op == "disable" and model.current != "ours":
                    continue  # what disable() does once another handler replaced ours is open
                getattr(model, op)()
                CALLS[op]()
                want = model.current == "ours"
                got = faults.is_enabled()
                assert got == want, (
                    f"after {op}: is_enabled() is {got}, the handler is {model.current}"
                )
        finally:
            if faults.is_enabled():
                faults.disable()
            faulthandler.disable()

    hunt()


#: Sequences of calls that end with faults.enable() (``params()["sequence"]`` names one).
SEQUENCES: dict[str, list[Callable[[], object]]] = {
    "enable-fhdisable-enable": [faults.enable, faulthandler.disable, faults.enable],
    "enable-disable-enable": [faults.enable, faults.disable, faults.enable],
    "fhenable-enable-fhdisable-fhenable-enable": [
        faulthandler.enable,
        faults.enable,
        faulthandler.disable,
        faulthandler.enable,
        faults.enable,
    ],
}


def case_reenabled_reporter_reports_the_fault() -> None:
    region = RegionGuard(ctypes.c_uint64, name="reported")
    key = PkeyGuard()
    _assoc = key.associate(region)  # kept alive, as the string program kept it
    for call in SEQUENCES[params()["sequence"]]:
        call()
    assert faults.is_enabled()
    print("FAULTING", flush=True)
    ctypes.c_uint64.from_address(region.address).value = 1
    raise AssertionError("the write to a NoAccess region did not fault")
