"""Fixtures shared by tests/unit and tests/hw (no pkeyguard import here: each suite's
conftest picks the backend before pkeyguard is imported)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parent / "native"


@pytest.fixture(scope="session")
def faultprobe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the test-only C helper: a fault reporter, a handler-PKRU recorder, and plain
    native functions that read or write a pointer they are handed (the "untrusted" code)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "the test suite needs a C compiler for its native helper"
    out = tmp_path_factory.mktemp("probe") / "faultprobe.so"
    subprocess.run(
        [
            cc,
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            str(NATIVE / "faultprobe.c"),
            "-o",
            str(out),
        ],
        check=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def faultprobe(faultprobe_path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(faultprobe_path)
    lib.faultprobe_handler_pkru.restype = ctypes.c_uint32
    lib.faultprobe_read.argtypes = [ctypes.c_void_p]
    lib.faultprobe_read.restype = ctypes.c_int
    return lib
