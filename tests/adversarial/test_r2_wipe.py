"""Issue 18, classes 10 and 9: a release never opens the secret to another thread, and costs
what was touched (children/r2_wipe.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

BACKINGS = ["memfd_secret", "mmap"]
HOW = ["close", "drop", "collect", "grow", "exit", "region", "many", "hook"]


@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize("how", HOW)
def test_release_never_opens_the_secret(how: str, backing: str, faultprobe_path: str) -> None:
    assert_survived(
        run_case(
            "r2_wipe",
            "case_release_never_opens_the_secret",
            params={"how": how, "backing": backing},
            env={"FAULTPROBE": faultprobe_path},
        )
    )


# Locked private pages are all in memory from the start (mlock faults them in): only secret
# memory and unlocked private pages can show a wipe that touches what was never touched.
@pytest.mark.parametrize("backing", ["memfd_secret", "mmap-unlocked"])
def test_wiping_costs_what_was_touched(backing: str) -> None:
    assert_survived(
        run_case("r2_wipe", "case_wiping_costs_what_was_touched", params={"backing": backing})
    )
