"""Class 13: pkeyguard.faults tells the truth about its handler.  After
faulthandler.disable() (which puts back the handler faulthandler found, removing the
reporter chained above it) is_enabled() reports False, and enable() reinstalls the reporter,
whose report then appears on a fault.  The child programs: children/c13_faults.py."""

from __future__ import annotations

import signal

import pytest

from tests.adversarial.children.c13_faults import SEQUENCES
from tests.adversarial.support import assert_died_with, assert_survived, run_case

CHILD = "c13_faults"


def test_is_enabled_false_after_faulthandler_disable() -> None:
    """Class 13: faults.enable(), then faulthandler.disable(): is_enabled() is False; enable()
    makes it True again; disable() False (the old flag stays True after faulthandler removed
    the handler)."""
    child = run_case(
        CHILD,
        "case_is_enabled_false_after_faulthandler_disable",
        fault_handler=False,
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_hunt_enable_disable_sequences() -> None:
    """Class 13 (hypothesis, in the child): random sequences of faults.enable()/disable()
    and faulthandler.enable()/disable(); after each step is_enabled() says whether the
    reporter is the installed SIGSEGV handler (per a model of who installed what)."""
    child = run_case(
        CHILD,
        "case_hunt_enable_disable_sequences",
        params={"examples": 150},
        fault_handler=False,
        watchdog=60,
    )
    assert_survived(child)


@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
def test_reenabled_reporter_reports_the_fault(sequence: str) -> None:
    """Class 13: after a sequence that ends with faults.enable(), an access to a NoAccess
    region dies by SIGSEGV with the pkeyguard report naming the region (the old enable()
    does not reinstall the reporter faulthandler.disable() removed: no report)."""
    child = run_case(
        CHILD,
        "case_reenabled_reporter_reports_the_fault",
        params={"sequence": sequence},
        fault_handler=False,
        timeout=60,
        watchdog=30,
    )
    assert_died_with(
        child,
        signal.SIGSEGV,
        "pkeyguard: protection fault: ",
        "region: 'reported (c_ulong)'",
    )
