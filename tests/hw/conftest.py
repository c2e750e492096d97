"""The hardware suite: runs only with the pku backend forced (in the PKU guest, or on a
machine with PKU), so it can never pass by silently falling back to mprotect."""

from __future__ import annotations

import os

import pytest

os.environ["PKEYGUARD_BACKEND"] = "pku"

import pkeyguard


def pytest_configure(config: pytest.Config) -> None:
    # Fail loudly, never skip: a hardware suite that cannot run is a failure.
    info = pkeyguard.backend()
    if info.name != "pku":  # pragma: no cover - backend() raises first when forced
        raise pytest.UsageError(f"tests/hw needs the pku backend, got {info}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # A skipped hardware test is missing coverage, not a pass: report it as a failure.
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"tests/hw does not skip: {report.longrepr}"
