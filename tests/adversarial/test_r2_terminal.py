"""Issue 18, class 12: ``Secret.from_prompt`` restores echo and closes the terminal whatever
moment a Ctrl-C hits.

The old code turned echo off and opened /dev/tty in Python: one KeyboardInterrupt between a
change and the ``try`` that undoes it, or inside the ``finally`` before the undo, left echo off
(4-8 times in 600 interrupted calls here) or the descriptor open; an interrupt inside the
growth copy came out as ViewError.  Children: ``children/r2_terminal.py``.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_prompt_restores_echo_and_closes_the_terminal_under_random_interrupts() -> None:
    child = run_case(
        "r2_terminal",
        "case_prompt_under_random_interrupts",
        params={"seed": 12, "rounds": 1200},
        watchdog=120,
        timeout=180,
    )
    assert_survived(child)


def test_the_terminal_object_used_out_of_order_restores_and_closes() -> None:
    assert_survived(run_case("r2_terminal", "case_quiet_terminal_used_by_hand"))
