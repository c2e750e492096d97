"""The hardware suite: runs only with the pku backend forced (in the PKU guest, or on a
machine with PKU), so it can never pass by silently falling back to mprotect."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ["PKEYGUARD_BACKEND"] = "pku"

import pkeyguard

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # Fail loudly, never skip: a hardware suite that cannot run is a failure.
    info = pkeyguard.backend()
    if info.name != "pku":  # pragma: no cover - backend() raises first when forced
        raise pytest.UsageError(f"tests/hw needs the pku backend, got {info}")


@pytest.fixture(scope="session")
def faultprobe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the test-only C helper (fault reporter, handler PKRU recorder)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "tests/hw needs a C compiler for its fault probe"
    out = tmp_path_factory.mktemp("probe") / "faultprobe.so"
    subprocess.run(
        [cc, "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
         str(HERE / "faultprobe.c"), "-o", str(out)],
        check=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def faultprobe(faultprobe_path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(faultprobe_path)
    lib.faultprobe_handler_pkru.restype = ctypes.c_uint32
    return lib


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # A skipped hardware test is missing coverage, not a pass: report it as a failure.
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"tests/hw does not skip: {report.longrepr}"
