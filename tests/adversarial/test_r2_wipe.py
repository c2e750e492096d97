"""Issue 18, classes 10 and 9: a release never opens the secret to another thread, and costs
what was touched (children/r2_wipe.py)."""

from __future__ import annotations

import os

import pytest

from tests.adversarial.support import assert_survived, run_case

BACKINGS = ["memfd_secret", "mmap"]
# each release is one chance for the reader to be reading when the bytes are open (the old code
# opened them for thousands of reads in most rounds); the pku guest emulates, slowly
PKU = os.environ.get("PKEYGUARD_BACKEND") == "pku"
ROUNDS = 10 if PKU else 40
# faulting in 4 MiB of secret memory a page at a time is slow under emulation
WATCHDOG = 240.0 if PKU else 60.0
HOW = ["close", "drop", "collect", "grow", "exit", "region", "many", "hook"]


@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize("how", HOW)
def test_release_never_opens_the_secret(how: str, backing: str, faultprobe_path: str) -> None:
    assert_survived(
        run_case(
            "r2_wipe",
            "case_release_never_opens_the_secret",
            params={"how": how, "backing": backing, "rounds": ROUNDS},
            env={"FAULTPROBE": faultprobe_path},
            watchdog=WATCHDOG,
            timeout=WATCHDOG + 60,
        )
    )


# Locked private pages are all in memory from the start (mlock faults them in): only secret
# memory and unlocked private pages can show a wipe that touches what was never touched.
@pytest.mark.parametrize("backing", ["memfd_secret", "mmap-unlocked"])
def test_wiping_costs_what_was_touched(backing: str) -> None:
    assert_survived(
        run_case("r2_wipe", "case_wiping_costs_what_was_touched", params={"backing": backing})
    )
