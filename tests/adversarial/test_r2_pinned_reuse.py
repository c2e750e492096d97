"""Class 8 (issue 18): a closed key's hardware number, when the key was created with initial
rights, goes to a later key only once no thread can hold rights to it.

The cases (tests/adversarial/children/r2_pinned_reuse.py) run in the simulated pool on any
machine, and on the pku backend too where this process has it (the PKU guest); the raw
writes that must fault are in tests/hw/test_virtual_keys.py.
"""

from __future__ import annotations

import pytest

import pkeyguard
from tests.adversarial.support import assert_survived, run_case

MODES = ["sim", "pku"] if pkeyguard.backend().name == "pku" else ["sim"]
CASES = [
    "case_the_creator_thread_gets_no_rights_to_a_later_key",
    "case_an_inheriting_thread_gets_no_rights_to_a_later_key",
    "case_an_heir_that_entered_a_guard_before_the_close_gets_no_rights",
    "case_the_forking_thread_stays_the_creator_in_the_child",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_a_pinned_number_is_not_reused_while_a_thread_may_hold_it(case: str, mode: str) -> None:
    env = {"PKEYGUARD_BACKEND": "pku"} if mode == "pku" else None
    assert_survived(run_case("r2_pinned_reuse", case, params={"mode": mode}, env=env))
