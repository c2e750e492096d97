"""The examples in examples/ run as documented."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=60
    )


def test_hmac_signing_key() -> None:
    proc = run("hmac_signing_key.py")
    assert proc.returncode == 0, proc.stderr
    assert "<Secret 'signing key' 32 bytes> signature" in proc.stdout


def test_sandboxed_parser() -> None:
    proc = run("sandboxed_parser.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "parsed: 12345"
    attacked = run("sandboxed_parser.py", "--attack")
    assert attacked.returncode == -signal.SIGSEGV
    assert "region: 'session key (bytes)'" in attacked.stderr


def test_crash_report() -> None:
    proc = run("crash_report.py")
    assert proc.returncode == -signal.SIGSEGV
    assert "protection fault: write at" in proc.stderr
    assert "line 22 in refresh_token" in proc.stderr
