"""Issue 18, class 1: no Python code between a change in the core and its completion.

The child program is ``children/r2_reentry.py``; each case fires one sabotage (re-enter the
guard being left, exit the top guard, enter another guard, close other objects, enter an
``isolated()`` block) from the first Python code the core runs in the middle of a change,
and checks that the core's bookkeeping and the pages agree, and that everything unwinds.
"""

from __future__ import annotations

import os

import pytest

from tests.adversarial.support import assert_survived, run_case

ACTIONS = ["reenter", "exit_top", "enter_new", "close_others", "isolated"]

# The failing system calls below are the mprotect backend's (on pku a guard exit is a WRPKRU,
# and isolated() changes no page): the children assert the backend instead of passing quietly.
mprotect_only = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") != "mprotect",
    reason="injects failures into the mprotect backend's switches",
)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("case", ["case_exit_with_live_export", "case_exit_out_of_order"])
def test_error_built_after_the_exit(case: str, action: str) -> None:
    assert_survived(run_case("r2_reentry", case, params={"action": action}))


@mprotect_only
@pytest.mark.parametrize("bomb", [False, True], ids=["init", "collector"])
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "case",
    [
        "case_exit_whose_mprotect_fails",
        "case_isolated_entry_fails_half_way",
        "case_isolated_exit_fails",
    ],
)
def test_failed_system_call_reported_after_the_change(case: str, action: str, bomb: bool) -> None:
    assert_survived(
        run_case("r2_reentry", case, params={"action": action, "bomb": bomb}, failinject=True)
    )


@mprotect_only
def test_half_closed_key_refuses_guards_and_bindings() -> None:
    assert_survived(run_case("r2_reentry", "case_key_close_whose_untag_fails", failinject=True))
