"""Issue 18, class 4 (attack round two, F4): a memoryview taken before fork() faults in the
child instead of reading zeros (children/r2_fork_views.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import SECRET_BACKINGS, assert_survived, run_case

BACKINGS = SECRET_BACKINGS


@pytest.mark.parametrize("backing", BACKINGS)
def test_memoryview_from_before_fork_faults_in_child(backing: str) -> None:
    assert_survived(
        run_case(
            "r2_fork_views",
            "case_memoryview_from_before_fork_faults_in_child",
            params={"backing": backing},
        )
    )


@pytest.mark.parametrize("backing", BACKINGS)
def test_child_exits_inherited_guard_and_closes(backing: str) -> None:
    assert_survived(
        run_case(
            "r2_fork_views",
            "case_child_exits_inherited_guard_and_closes",
            params={"backing": backing},
        )
    )


def test_failed_close_in_handler_leaves_zeros() -> None:
    assert_survived(
        run_case(
            "r2_fork_views",
            "case_failed_close_in_handler_leaves_zeros",
            params={"backing": "mmap"},
            failinject=True,
        )
    )
