"""Issue 18, class 3: a Secret's key is reachable from no public object (``reveal()``'s
guard and view, the Secret, ``isolated()``'s value), and refuses to be closed or re-bound by
anyone who gets it anyway.  The child program is ``children/r2_secret_key.py``."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize(
    "case",
    [
        "case_reveal_guard_and_view_hide_the_key",
        "case_isolated_does_not_hand_out_a_secrets_key",
        "case_a_secrets_key_cannot_be_closed_or_rebound",
    ],
)
def test_a_secrets_key_stays_private(case: str) -> None:
    assert_survived(run_case("r2_secret_key", case))
