"""Issue 18, class 2 (mapping side): injected system-call failures on every release path
(children/r2_release_failures.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

PATHS = ["secret", "hook", "drop", "collect", "exit", "region", "key-first", "exit-active"]


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap"])
@pytest.mark.parametrize("path", PATHS)
def test_every_release_syscall_fails_closed(path: str, backing: str) -> None:
    child = run_case(
        "r2_release_failures",
        "case_every_release_syscall_fails",
        params={"path": path, "backing": backing},
        failinject=True,
    )
    assert_survived(child)
    assert "injected" in child.stdout
