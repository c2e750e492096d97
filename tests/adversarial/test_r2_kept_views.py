"""Issue 18, classes 1/2/3 (attack round two, F7, F3): a released range stays reserved and
closed while a memoryview of it lives, and a failed munmap is retried
(children/r2_kept_views.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import SECRET_BACKINGS, assert_survived, run_case

BACKINGS = SECRET_BACKINGS


@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize(
    "case",
    ["case_writer_keeps_a_slice", "case_stream_keeps_a_slice", "case_region_view_kept_past_close"],
)
def test_stale_memoryview_never_aliases_a_later_mapping(case: str, backing: str) -> None:
    assert_survived(run_case("r2_kept_views", case, params={"backing": backing}))


@pytest.mark.parametrize("backing", BACKINGS)
def test_failed_munmap_is_retried(backing: str) -> None:
    assert_survived(
        run_case(
            "r2_kept_views",
            "case_failed_munmap_is_retried",
            params={"backing": backing},
            failinject=True,
        )
    )


def test_growth_munmap_failure_is_retried() -> None:
    assert_survived(
        run_case(
            "r2_kept_views",
            "case_growth_munmap_failure_is_retried",
            params={"backing": "mmap"},
            failinject=True,
        )
    )
