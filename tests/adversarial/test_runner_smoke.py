"""The module runner itself: a passing case survives, a failing or crashing one does not."""

from __future__ import annotations

import signal

from tests.adversarial.support import assert_died_with, assert_survived, run_case


def test_a_clean_case_survives() -> None:
    assert_survived(run_case("example_smoke", "case_clean_guard_block", params={"value": 7}))


def test_an_assertion_in_the_child_fails_the_case() -> None:
    child = run_case("example_smoke", "case_assertion_fails")
    assert child.returncode == 1
    assert "this case fails on purpose" in child.stderr


def test_a_signal_in_the_child_fails_the_case() -> None:
    child = run_case("example_smoke", "case_dies_by_signal", fault_handler=False)
    assert_died_with(child, signal.SIGSEGV)


def test_failure_injection_reaches_the_core() -> None:
    assert_survived(
        run_case("example_smoke", "case_failinject_fails_a_core_mprotect", failinject=True)
    )
