"""The examples in examples/ run as documented."""

from __future__ import annotations

import hmac
import os
import signal
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str, *args: str, stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=stdin,
    )


def test_hmac_signing_key() -> None:
    proc = run("hmac_signing_key.py")
    assert proc.returncode == 0, proc.stderr
    assert "<Secret 'signing key' 32 bytes> signature" in proc.stdout


def test_sign_from_stdin_through_a_pipe_and_a_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    expected = hmac.digest(key, b"GET /orders", "sha256").hex()
    r, w = os.pipe()
    os.write(w, key)
    os.close(w)
    try:
        proc = run("sign_from_stdin.py", "GET /orders", stdin=r)
    finally:
        os.close(r)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
    assert "<Secret 'signing key' 32 bytes> in memfd_secret memory" in proc.stderr
    path = tmp_path / "key"
    path.write_bytes(key)
    with open(path, "rb") as f:
        proc = run("sign_from_stdin.py", "GET /orders", stdin=f.fileno())
    assert proc.stdout.strip() == expected, proc.stderr
    assert run("sign_from_stdin.py").returncode == 2


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
