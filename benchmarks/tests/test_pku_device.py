"""``benchmarks/pku-device.sh``, the one command for a machine with PKU: what it would run
(``--dry-run``) and its refusals.  The measuring itself needs PKU hardware."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "pku-device.sh"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="pku-device.sh not in this tree")


def run(*args: str, pythons: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONS": pythons}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )


def test_dry_run_names_each_cpython_and_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run("--dry-run", str(out), pythons=sys.executable)
    assert r.returncode == 0, r.stderr
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"cpython{ver}: {sys.executable} -> {out}/pku-" in r.stdout
    assert r.stdout.rstrip().endswith(f"-cpython{ver}.{{txt,json,png}}")
    assert not out.exists(), "a dry run creates nothing"


def test_no_usable_cpython_is_a_usage_error(tmp_path: Path) -> None:
    r = run("--dry-run", str(tmp_path), pythons="/nonexistent/python3")
    assert r.returncode == 2
    assert "no CPython >= 3.11 found" in r.stderr


def test_unknown_option_is_refused() -> None:
    r = run("--fast", pythons=sys.executable)
    assert r.returncode == 2 and "unknown option --fast" in r.stderr
