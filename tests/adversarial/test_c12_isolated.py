"""Class 12: isolated() keeps working while other threads create and close keys, and an
isolated() block exited from the wrong thread raises GuardThreadError and can then be left
from the right one.  The child programs: children/c12_isolated.py."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case

CHILD = "c12_isolated"


def test_isolated_while_other_threads_create_and_close_keys() -> None:
    """Class 12: two threads keep creating keys (with a region each) and closing them (a
    close refused by an active isolated() block is retried) while the main thread runs
    isolated() blocks: no "Set changed size during iteration", no GuardStateError for a key
    closed in the meantime, no guard left behind, nothing leaked."""
    child = run_case(
        CHILD,
        "case_isolated_while_other_threads_create_and_close_keys",
        params={"threads": 2, "rounds": 1500},
        timeout=120,
        watchdog=90,
    )
    assert_survived(child)


def test_isolated_exited_from_the_wrong_thread() -> None:
    """Class 12: an isolated() block (inside a ReadWrite guard) exited from another thread
    raises GuardThreadError and changes nothing; exited afterwards from the right thread it
    restores the rights (ReadWrite again) and leaves only the outer guard (the old generator
    finishes on the wrong thread: the block can never be left and its guards stay)."""
    child = run_case(CHILD, "case_isolated_exited_from_the_wrong_thread", timeout=60, watchdog=30)
    assert_survived(child)
