"""Issue 18, class 4: guards, reveal() guards, views and isolated() handles made before a
fork check the fork when they are used in the child (both backings of secret memory).  The
child program is ``children/r2_fork.py``."""

from __future__ import annotations

import pytest

from tests.adversarial.support import SECRET_BACKINGS, assert_survived, run_case

BACKINGS = SECRET_BACKINGS


@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize(
    "case",
    [
        "case_reveal_guard_made_before_fork",
        "case_secure_region_guard_made_before_fork",
        "case_guard_active_across_fork",
        "case_isolated_handle_made_before_fork",
    ],
)
def test_made_before_fork_checked_when_used(case: str, backing: str) -> None:
    assert_survived(run_case("r2_fork", case, params={"backing": backing}))
