"""Issue 18, class 7: a view access is O(1) and isolated() O(keys), checked as counts of the
guards the core visits (``_core._walk_steps()``), never as times (those are in the benchmark's
``keys`` group).  The child program is ``children/r2_costs.py``."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("keys", [10, 1000, 5000])
def test_view_access_does_not_grow_with_the_number_of_keys(keys: int) -> None:
    case = "case_view_access_does_not_grow_with_keys"
    assert_survived(run_case("r2_costs", case, params={"keys": keys}))


@pytest.mark.parametrize("keys", [10, 1000, 5000])
def test_isolated_does_not_grow_with_the_number_of_keys(keys: int) -> None:
    case = "case_isolated_does_not_grow_with_keys"
    assert_survived(run_case("r2_costs", case, params={"keys": keys}))


def test_isolated_counts_again_after_a_finalizer_closes_a_key() -> None:
    case = "case_isolated_counts_again_after_a_finalizer_closes_a_key"
    assert_survived(run_case("r2_costs", case, params={"keys": 20}))
