"""Issue 18: secure memory that cannot be backed fails at creation (children/r2_backing.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("keep_cap", [False, True], ids=["no-CAP_IPC_LOCK", "root"])
def test_secret_memory_over_the_locked_limit_fails_at_creation(keep_cap: bool) -> None:
    assert_survived(
        run_case(
            "r2_backing",
            "case_secret_memory_over_the_locked_limit_fails_at_creation",
            params={"keep_cap": keep_cap},
        )
    )


@pytest.mark.parametrize("skip", [0, 2, 4])
def test_a_page_the_kernel_will_not_back_fails_the_creation(skip: int) -> None:
    assert_survived(
        run_case(
            "r2_backing",
            "case_a_page_the_kernel_will_not_back_fails_the_creation",
            params={"skip": skip},
            failinject=True,
        )
    )


def test_sizes_that_cannot_be_backed_are_refused_up_front() -> None:
    assert_survived(run_case("r2_backing", "case_sizes_that_cannot_be_backed_are_refused_up_front"))
