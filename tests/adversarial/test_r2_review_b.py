"""Issue 18, second review (b): children/r2_review_b.py."""

from __future__ import annotations

import os

import pytest

from tests.adversarial.support import assert_survived, run_case


def test_key_finalizer_during_region_close_finds_it_released() -> None:
    child = run_case("r2_review_b", "case_key_finalizer_during_region_close")
    assert_survived(child)
    assert "finalizer ran: refused" in child.stdout


def test_key_close_raises_the_first_untag_failure_once_closed() -> None:
    child = run_case("r2_review_b", "case_key_close_untag_failures_first_error", failinject=True)
    assert_survived(child)
    assert "first error raised" in child.stdout


def test_nonblocking_fifo_read_blocks_no_signal() -> None:
    child = run_case("r2_review_b", "case_nonblocking_fifo_read_needs_no_mask")
    assert_survived(child)
    assert "masks: 0" in child.stdout


def test_prompt_reads_switch_nothing() -> None:
    child = run_case("r2_review_b", "case_prompt_reads_need_no_mask")
    assert_survived(child)
    assert "masks: 0" in child.stdout


@pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") == "pku",
    reason="300 nested reveals hold 300 keys open at once; pku has 15 hardware keys",
)
def test_fork_inside_nested_reveals_visits_each_key_once() -> None:
    child = run_case("r2_review_b", "case_fork_inside_nested_reveals_is_linear", params={"n": 300})
    assert_survived(child)
    assert "child steps:" in child.stdout
