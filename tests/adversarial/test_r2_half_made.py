"""Attack round two, C3: a Secret that fails to be made leaves no mapping and no key behind,
even while its exception is kept (children/r2_half_made.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import SECRET_BACKINGS, assert_survived, run_case


@pytest.mark.parametrize("backing", SECRET_BACKINGS)
def test_failed_secret_leaves_nothing_while_its_error_lives(backing: str) -> None:
    assert_survived(
        run_case(
            "r2_half_made",
            "case_failed_secret_leaves_nothing_while_its_error_lives",
            params={"backing": backing},
            failinject=True,
        )
    )
