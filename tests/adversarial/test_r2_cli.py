"""Issue 18, class 11 (command line): every error path of ``python -m pkeyguard`` is one line
on standard error (when there is one) and a non-zero status, never a traceback.

On a3e9ecf, with standard output closed (``>&-``), ``info`` and ``demo`` died with an
AttributeError traceback, ``--help``/``--version`` wrote to stderr and exited 0, and
``demo`` on an unusable backend printed a traceback where ``info`` gave one line.
The CLI is the child here: each run is a fresh ``sh -c 'exec python -m pkeyguard ...'``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

COMMANDS = [["info"], ["info", "--json"], ["demo"], ["--version"], ["--help"]]
IDS = [" ".join(c) for c in COMMANDS]


def _cli(
    args: list[str], redirect: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m pkeyguard ARGS`` with a shell redirection (``>&-``, ``2>&-``)."""
    script = f'exec "$0" -m pkeyguard "$@" {redirect}'
    full_env = {**os.environ, "PKEYGUARD_BACKEND": "mprotect", **(env or {})}
    return subprocess.run(
        ["sh", "-c", script, sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def _reader_gone(args: list[str], backend: str) -> subprocess.CompletedProcess[str]:
    """``python -m pkeyguard ARGS`` writing to a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "pkeyguard", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PKEYGUARD_BACKEND": backend},
        )
    finally:
        os.close(write_end)


def _one_line(proc: subprocess.CompletedProcess[str], ending: str) -> None:
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m pkeyguard: ") and err.endswith(ending), err


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_closed_stdout_is_one_line_and_status_1(args: list[str]) -> None:
    proc = _cli(args, ">&-")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    _one_line(proc, "cannot write the output: standard output is closed")


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_closed_stderr_changes_nothing_that_works(args: list[str]) -> None:
    proc = _cli(args, "2>&-")
    assert proc.returncode == 0, proc.returncode
    assert proc.stdout, "no output"


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_both_closed_still_fails(args: list[str]) -> None:
    # Nowhere to say it: the status alone tells.
    assert _cli(args, ">&- 2>&-").returncode == 1


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_a_reader_that_goes_away_is_not_an_error(args: list[str]) -> None:
    # `pkeyguard info | head -c1`: the rest of the output is dropped, quietly, status 0
    script = '"$0" -m pkeyguard "$@" | head -c1 >/dev/null; exit "${PIPESTATUS[0]}"'
    piped = subprocess.run(
        ["bash", "-c", script, sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PKEYGUARD_BACKEND": "mprotect"},
    )
    assert piped.returncode == 0, (piped.returncode, piped.stderr)
    assert piped.stderr == "", piped.stderr
    # (head may go only after all was written) and with the reader gone before the first
    # write: EPIPE for certain
    gone = _reader_gone(args, "mprotect")
    assert gone.returncode == 0 and gone.stderr == "", (gone.returncode, gone.stderr)


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_a_full_disk_is_one_line_and_status_1(args: list[str]) -> None:
    proc = _cli(args, ">/dev/full")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    _one_line(proc, "cannot write the output: No space left on device")


def test_demo_on_an_unusable_backend_is_one_line_like_info() -> None:
    env = {"PKEYGUARD_BACKEND": "nonsense"}
    demo = _cli(["demo"], env=env)
    assert demo.returncode == 1, demo.stderr
    _one_line(demo, "is not a backend: use 'pku', 'mprotect' or unset it")
    assert "PkeyguardError" in demo.stderr
    info = _cli(["info"], env=env)
    assert info.returncode == 1 and "Traceback" not in info.stderr, info.stderr
    assert "backend:          none: " in info.stdout
    # closed stdout too: still one line, not a traceback
    closed = _cli(["demo"], ">&-", env=env)
    assert closed.returncode == 1
    _one_line(closed, "is not a backend: use 'pku', 'mprotect' or unset it")


@pytest.mark.parametrize("redirect", ["", ">&-", "2>&-"])
def test_a_usage_error_stays_status_2(redirect: str) -> None:
    proc = _cli(["bogus"], redirect)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["info"], ["info", "--json"]], ids=["info", "info --json"])
def test_a_reader_that_goes_away_keeps_a_failing_status(args: list[str]) -> None:
    # The backend's failure is known before the first write: a reader gone before it (EPIPE
    # for certain) drops the output, not the status.  Found by attack round two (F5): `info
    # | (exec 0<&-; true)` exited 0 on an unusable backend.
    gone = _reader_gone(args, "nonsense")
    assert gone.returncode == 1, (gone.returncode, gone.stderr)
    assert "Traceback" not in gone.stderr, gone.stderr


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "python -u"])
@pytest.mark.parametrize("args", COMMANDS[:3], ids=IDS[:3])
def test_a_full_non_blocking_pipe_is_one_line_and_status_1(
    args: list[str], unbuffered: bool
) -> None:
    # Found by attack round two (C2): with stdout a full O_NONBLOCK pipe, the unbuffered
    # interpreter dropped the output on EAGAIN and the CLI exited 0 with nothing said.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(write_end, b"x" * 4096)
    try:
        proc = subprocess.run(
            [sys.executable, *(["-u"] if unbuffered else []), "-m", "pkeyguard", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PKEYGUARD_BACKEND": "mprotect"},
        )
    finally:
        os.close(write_end)
        os.close(read_end)
    assert filled > 0, "the attack: the pipe was full before the CLI wrote"
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    _one_line(proc, "cannot write the output: Resource temporarily unavailable")
