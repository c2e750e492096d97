"""The command line as a user meets it: version, program name, help, pipes, output errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from tests.adversarial.support import run_case

CLI = [sys.executable, "-m", "pkeyguard"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


def test_version_is_the_distributions() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"pkeyguard {version('pkeyguard')}"


@pytest.mark.parametrize("argv0", ["/usr/local/bin/pkeyguard", "/tmp/venv/bin/pkeyguard"])
def test_program_name_comes_from_argv0(argv0: str) -> None:
    child = run_case(
        "tests.unit.children.h_cli", "case_program_name_comes_from_argv0", params={"argv0": argv0}
    )
    assert child.stdout.startswith("usage: pkeyguard "), child.stdout
    assert "exit 0" in child.stdout


def test_help_shows_no_markup() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for markup in ("``", "`", ":class:", ":func:", "**"):
        assert markup not in proc.stdout, (markup, proc.stdout)
    assert "info" in proc.stdout and "demo" in proc.stdout


def test_info_is_human_readable_and_json_is_complete() -> None:
    env = {**os.environ, "PKEYGUARD_BACKEND": ""}
    text = run_cli("info", env=env)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert first.startswith(f"pkeyguard {version('pkeyguard')} on CPython {sys.version.split()[0]}")
    assert "backend:" in text.stdout
    assert "{" not in text.stdout and "[" not in text.stdout, text.stdout  # no raw reprs
    report = json.loads(run_cli("info", "--json", env=env).stdout)
    assert report["version"] == version("pkeyguard")
    assert report["python"] == sys.version.split()[0]
    assert report["backend"] in ("pku", "mprotect")


@pytest.mark.parametrize("command", ["info", "demo"])
def test_a_closed_pipe_exits_quietly(command: str) -> None:
    # `pkeyguard info | head -1` with the reader already gone: EPIPE on the first write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*CLI, command], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, "info"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith("cannot write the output: No space left on device")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_bad_command_is_a_usage_error() -> None:
    proc = run_cli("bench")  # the benchmark left the library: pkeyguard_bench
    assert proc.returncode == 2
    assert "invalid choice: 'bench'" in proc.stderr
