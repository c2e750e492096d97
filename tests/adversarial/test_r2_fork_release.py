"""Issue 18, class 6: a fork during a release (children/r2_fork_release.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap"])
@pytest.mark.parametrize("how", ["fork", "clone"])
def test_fork_in_the_release_hook_leaves_the_child_consistent(how: str, backing: str) -> None:
    child = run_case(
        "r2_fork_release", "case_fork_in_the_hook", params={"how": how, "backing": backing}
    )
    assert_survived(child)
    assert f"forked in the hook: {how}" in child.stdout
