"""The C core compiles warning-free with -Wall -Wextra -Werror."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "pkeyguard"


@pytest.mark.parametrize("source", sorted(p.name for p in SRC.glob("*.c")))
def test_c_sources_compile_with_werror(source: str, tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required to build pkeyguard"
    include = sysconfig.get_paths()["include"]
    proc = subprocess.run(
        [
            cc,
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fPIC",
            f"-I{include}",
            "-c",
            str(SRC / source),
            "-o",
            str(tmp_path / "out.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
