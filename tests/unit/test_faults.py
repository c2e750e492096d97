"""Fault reports on the mprotect backend (SEGV_ACCERR on a known region)."""

from __future__ import annotations

import re
import signal

import pkeyguard
from tests.adversarial.support import run_case
from tests.support import Child

CHILD = "tests.unit.children.h_faults"


def run(case: str) -> Child:
    """Run ``case`` of the child module without the runner's faulthandler: the cases enable
    pkeyguard's reporter, which enables faulthandler itself."""
    return run_case(CHILD, case, fault_handler=False)


def test_write_under_read_only_is_explained() -> None:
    child = run("case_write_under_read_only")
    assert child.returncode == -signal.SIGSEGV, child
    addr = int(re.search(r"ADDR (0x[0-9a-f]+)", child.stdout).group(1), 16)  # type: ignore[union-attr]
    err = child.stderr
    assert f"pkeyguard: protection fault: write at {addr + 8:#x} (SEGV_ACCERR" in err, err
    assert f"region: 'api-token (c_ulong)' [{addr:#x}, {addr + 4096:#x}) offset 8" in err
    assert re.search(r"^  key: \d+$", err, re.M) and re.search(r"^  thread: \d+$", err, re.M)
    # faulthandler follows with the Python traceback, down to the faulting line
    assert "Fatal Python error: Segmentation fault" in err
    assert re.search(r"line \d+ in handler_of_requests", err), err


def test_read_with_no_guard_is_explained() -> None:
    child = run("case_read_with_no_guard")
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault: read at" in child.stderr
    assert "region: 'api-token (c_ulong)'" in child.stderr


def test_unrelated_crash_is_not_misreported() -> None:
    child = run("case_unrelated_crash")
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault" not in child.stderr
    assert "Fatal Python error: Segmentation fault" in child.stderr


def test_closed_region_is_forgotten() -> None:
    child = run("case_closed_region_is_forgotten")
    assert child.returncode == -signal.SIGSEGV
    assert "region: 'other" not in child.stderr


def test_disable_restores_the_previous_handler() -> None:
    child = run("case_disable_restores_the_previous_handler")
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault" not in child.stderr
    assert "Fatal Python error" in child.stderr  # faulthandler is still there


def test_enable_is_idempotent_in_process() -> None:
    was = pkeyguard.faults.is_enabled()
    try:
        pkeyguard.faults.enable()
        pkeyguard.faults.enable()
        assert pkeyguard.faults.is_enabled()
    finally:
        if not was:
            pkeyguard.faults.disable()
    assert pkeyguard.faults.is_enabled() is was
