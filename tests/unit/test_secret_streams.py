"""Secrets read from files, descriptors and streams: straight into protected memory, from
anything readable (pipes, /dev/stdin, /proc files that report size 0), and safe against
streams that lie, raise, keep the buffer, never end, fork or get interrupted.

The hostile cases run in a child interpreter: a signal, a hang, a leaked mapping or key, or
an unexpected exception fails them.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkeyguard import ArgumentTypeError, RegionError, Secret, StreamError, allocator
from tests.adversarial.support import MARKER, assert_survived, run_case
from tests.support import REPO_ROOT, case_command

PAGE = allocator.PAGE_SIZE


def revealed(secret: Secret) -> bytes:
    with secret.reveal() as buf:
        return bytes(buf)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def feed(fd: int, data: bytes, chunk: int = 1000) -> threading.Thread:
    """Write ``data`` to ``fd`` in small pieces from a thread, then close it."""

    def run() -> None:
        for i in range(0, len(data), chunk):
            os.write(fd, data[i : i + chunk])
        os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.usefixtures("no_leaks")
class TestReadable:
    def test_regular_file_exact_size(self, tmp_path: Path) -> None:
        for size in (1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 5):
            path = tmp_path / f"k{size}"
            path.write_bytes(os.urandom(size))
            with Secret.from_file(path) as secret:
                assert len(secret) == size and revealed(secret) == path.read_bytes()

    def test_pipe_through_from_fd_in_pieces(self, pipe: tuple[int, int]) -> None:
        r, w = pipe
        data = os.urandom(5 * PAGE + 123)
        writer = feed(w, data)
        with Secret.from_fd(r) as secret:
            assert revealed(secret) == data
        writer.join()

    def test_fifo_by_path(self, tmp_path: Path) -> None:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        data = b"token-from-a-fifo"

        def write() -> None:
            with open(fifo, "wb") as f:
                f.write(data)

        t = threading.Thread(target=write)
        t.start()
        with Secret.from_file(fifo) as secret:  # st_size is 0 for a FIFO
            assert revealed(secret) == data
        t.join()

    def test_proc_file_that_reports_size_zero(self) -> None:
        path = f"/proc/{os.getpid()}/cmdline"
        assert os.stat(path).st_size == 0
        expected = Path(path).read_bytes()
        with Secret.from_file(path) as secret:
            assert revealed(secret) == expected

    def test_from_stream_with_an_unbuffered_file_and_bytesio(self, tmp_path: Path) -> None:
        path = tmp_path / "k"
        path.write_bytes(b"x" * 3 * PAGE)
        with open(path, "rb", buffering=0) as f, Secret.from_stream(f) as secret:
            assert revealed(secret) == b"x" * 3 * PAGE
        with Secret.from_stream(io.BytesIO(b"from memory")) as secret:
            assert revealed(secret) == b"from memory"

    def test_reads_from_the_current_offset_and_leaves_the_descriptor_open(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "k"
        path.write_bytes(b"header:secret")
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 7, os.SEEK_SET)
            with Secret.from_fd(fd) as secret:
                assert revealed(secret) == b"secret"
            os.fstat(fd)  # still open
        finally:
            os.close(fd)

    def test_the_reader_writes_straight_into_protected_memory(self) -> None:
        """No bytes object on the way: readinto() is handed a memoryview over the secret's
        own (locked, key-tagged) pages."""
        seen: list[tuple[int, bool, str]] = []

        class Reader:
            def __init__(self) -> None:
                self.left = 10

            def readinto(self, buffer: memoryview) -> int:
                address = _address_of(buffer)
                seen.append((address, buffer.readonly, type(buffer.obj).__name__))
                n = min(self.left, buffer.nbytes)
                buffer[:n] = b"s" * n
                self.left -= n
                return n

        with Secret.from_stream(Reader()) as secret:
            assert revealed(secret) == b"s" * 10
        assert seen and all(not ro and kind == "MutBytesRef" for _, ro, kind in seen), seen

    def test_grows_past_the_first_guess_and_trims_to_what_came(self) -> None:
        data = os.urandom(10 * PAGE + 7)
        with Secret.from_stream(io.BytesIO(data)) as secret:
            assert len(secret) == len(data) and revealed(secret) == data


def _address_of(buffer: memoryview) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.mark.usefixtures("no_leaks")
class TestRefused:
    def test_empty_input(self, tmp_path: Path, pipe: tuple[int, int]) -> None:
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        with pytest.raises(RegionError, match="no bytes"):
            Secret.from_file(empty)
        r, w = pipe
        os.close(w)
        with pytest.raises(RegionError, match="no bytes"):
            Secret.from_fd(r)

    def test_more_than_max_size(self) -> None:
        with pytest.raises(StreamError, match="max_size=100"):
            Secret.from_stream(io.BytesIO(b"x" * 101), max_size=100)
        with Secret.from_stream(io.BytesIO(b"x" * 100), max_size=100) as secret:
            assert len(secret) == 100

    def test_bad_arguments(self) -> None:
        with pytest.raises(ArgumentTypeError, match="readinto"):
            Secret.from_stream(io.StringIO("text"))  # type: ignore[arg-type]
        with pytest.raises(ArgumentTypeError, match="fd must be an int"):
            Secret.from_fd("0")  # type: ignore[arg-type]
        with pytest.raises(ArgumentTypeError):
            Secret.from_fd(True)
        with pytest.raises(ArgumentTypeError, match="max_size"):
            Secret.from_stream(io.BytesIO(b"x"), max_size=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_size"):
            Secret.from_fd(0, max_size=0)
        with pytest.raises(OSError):
            Secret.from_fd(987654)  # not open
        # a descriptor is no path: from_file must neither read it nor close it
        r, w = os.pipe()
        os.write(w, b"not for from_file")
        os.close(w)  # (the old code read it to its end: let that end come)
        try:
            for not_a_path in (r, True, 1.5, None):
                with pytest.raises(ArgumentTypeError, match="from_fd"):
                    Secret.from_file(not_a_path)  # type: ignore[arg-type]
            os.fstat(r)  # still open
            assert os.read(r, 100) == b"not for from_file"  # and unread
        finally:
            os.close(r)
        # numbers beyond a C int name no descriptor either: the same error, not OverflowError
        for fd in (1 << 40, -(1 << 40), -1):
            with pytest.raises(OSError) as info:
                Secret.from_fd(fd)
            assert info.value.errno == errno.EBADF, info.value


# -- hostile streams, each in a child interpreter -------------------------------------------

CHILD = "tests.unit.children.s_secret_streams"


def hostile(case: str, **params: object) -> str:
    """Run a hostile case of the child module; it must end cleanly (no leak, printed
    ``clean``, nothing on stderr about ignored exceptions).  Its stdout."""
    child = run_case(CHILD, case, params=params)
    assert_survived(child)
    lines = child.stdout.splitlines()
    assert lines[-2:] == ["clean", MARKER], child
    assert "Exception ignored" not in child.stderr, child
    return "\n".join(lines[:-1])


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("None", "no data now"),
        ("'7'", "returned str"),
        ("7.0", "returned float"),
        ("True", "returned bool"),
        ("-1", "returned -1"),
        ("10**6", "returned 1000000 for a"),
        ("I()", "returned I"),
    ],
)
def test_readinto_returning_the_wrong_thing(result: str, message: str) -> None:
    out = hostile("case_readinto_returning_the_wrong_thing", result=result)
    assert "StreamError" in out and message in out, out


def test_reader_that_raises_midway_leaves_nothing() -> None:
    out = hostile("case_reader_that_raises_midway")
    assert out.split("\n")[:3] == ["raised Boom", "raised KeyboardInterrupt", "raised MemoryError"]


def test_reader_that_keeps_the_buffer() -> None:
    """It gets a StreamError, and the memory it kept is wiped and unmapped (touching it
    would fault: that is the one thing a zero-copy buffer cannot prevent)."""
    out = hostile("case_reader_that_keeps_the_buffer")
    assert "StreamError True" in out, out


def test_endless_stream_stops_at_max_size() -> None:
    out = hostile("case_endless_stream_stops_at_max_size")
    assert out.count("stopped") == 4, out


def test_reader_that_closes_and_reveals_other_secrets() -> None:
    """Each secret has its own key: while readinto() holds a writable buffer over this one,
    revealing another works (it narrows nothing of this one's key), and so does closing
    another.  (With one shared key it was refused: a read-only guard on the same key would
    have made the writable buffer fault.)"""
    out = hostile("case_reader_that_closes_and_reveals_other_secrets")
    assert out.split("\n")[:2] == ["revealed inside readinto", "b'ok' True"], out


def test_fork_inside_readinto() -> None:
    """The child's half-read secret is not the parent's: the child gets
    SecretUnavailableError, the parent its secret."""
    out = hostile("case_fork_inside_readinto")
    assert "b'abcdef'" in out, out


def test_signal_while_blocked_on_an_empty_pipe() -> None:
    out = hostile("case_signal_while_blocked_on_an_empty_pipe")
    assert "interrupted" in out, out


def test_nonblocking_descriptor_with_no_data() -> None:
    out = hostile("case_nonblocking_descriptor_with_no_data")
    assert "BlockingIOError" in out, out


def test_two_threads_read_one_pipe() -> None:
    out = hostile("case_two_threads_read_one_pipe")
    assert "total 262144" in out, out


def test_daemon_thread_reading_at_interpreter_exit() -> None:
    """A daemon thread blocked in from_fd() while the interpreter exits: the half-read
    secret is zeroed in place (the daemon is inside its write block) and nothing faults."""
    child = run_case(CHILD, "case_daemon_thread_reading_at_interpreter_exit")
    assert child.returncode == 0 and child.stdout.split() == ["exiting", MARKER], child
    assert "Traceback" not in child.stderr and "Exception ignored" not in child.stderr, child


def test_stdin_of_a_real_process() -> None:
    for how in ("file", "fd"):
        argv, env = case_command(CHILD, "case_stdin", params={"how": how})
        proc = subprocess.run(
            argv,
            input=b"piped secret\n",
            capture_output=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc
        assert proc.stdout.split() == [b"13", b"True", MARKER.encode()], proc


def _prompt(typed: bytes) -> tuple[int, bytes]:
    """Run Secret.from_prompt() in a child whose terminal is a pty we type into."""
    import pty
    import time

    argv, env = case_command(CHILD, "case_prompt")
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(REPO_ROOT)
        os.execve(argv[0], argv, env)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"Key: " not in out and time.monotonic() < deadline:
            out += os.read(master, 1024)
        time.sleep(0.1)  # the child switches echo off before it prompts; let it block in read
        os.write(master, typed)
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_password_prompt_without_echo_or_copy() -> None:
    code, out = _prompt(b"hunter2-pw\n")
    assert code == 0, out
    assert b"hunter2-pw" not in out, "the password was echoed"
    expected = hmac.new(b"hunter2-pw", b"m", "sha256").hexdigest()
    assert f"LEN 10 MAC {expected}".encode() in out, out
    assert b"ECHO True" in out, out


def test_password_prompt_refuses_an_empty_line_and_restores_echo() -> None:
    code, out = _prompt(b"\n")
    assert code == 3 and b"ERR RegionError" in out, out
    assert b"ECHO True" in out, out


def test_password_prompt_without_a_terminal() -> None:
    argv, env = case_command(CHILD, "case_prompt")
    child = subprocess.run(
        argv,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        start_new_session=True,  # no controlling terminal
        timeout=60,
        check=False,
    )
    assert child.returncode == 3 and "ERR OSError" in child.stdout, child
