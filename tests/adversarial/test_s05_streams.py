"""from_stream / from_fd / from_file / from_writer / from_prompt.  The child programs are
``children/s_streams.py``."""

import pytest

from tests.adversarial.support import assert_survived, run_case

CASES = [
    "none",
    "neg",
    "toomuch",
    "float",
    "str",
    "bool",
    "intsub",
    "index",
    "raise",
    "kbint",
    "huge",
    "forever",
    "zero_first",
    "release",
    "keep_slice",
    "keep_cast",
    "keep_ctypes",
    "keep_obj",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_readinto(case: str) -> None:
    """HELD: every odd return value -> StreamError (or the reader's own exception, or
    RegionError for an empty secret); keeping the buffer -> StreamError; no mapping left."""
    child = run_case(
        "s_streams",
        "case_hostile_readinto",
        params={"case": case},
        watchdog=30,
    )
    assert_survived(child)


def test_max_size_errors_are_pkeyguard_errors() -> None:
    """MINOR DEFECT: max_size=0 / -1 (from_stream, from_fd, from_file, from_prompt) raise a
    plain builtins.ValueError, not a PkeyguardError (max_size=True/'10' do raise
    ArgumentTypeError; a region size of 0 raises RegionError)."""
    child = run_case(
        "s_streams",
        "case_max_size_errors_are_pkeyguard_errors",
        watchdog=30,
    )
    assert_survived(child)


def test_from_fd_and_from_file_odd_sources_hold() -> None:
    """HELD: bad fds, directories, /dev/zero, /dev/null, /proc files, /proc/self/mem,
    sockets, non-blocking pipes, exact max_size; no fd or mapping leaked."""
    child = run_case(
        "s_streams",
        "case_from_fd_and_from_file_odd_sources",
        watchdog=30,
    )
    assert_survived(child)


def test_keyboard_interrupt_during_from_file_on_a_fifo_leaks_nothing() -> None:
    """HELD: Ctrl-C (SIGALRM handler raising KeyboardInterrupt) while from_file blocks on a
    FIFO with a partial secret: no fd, no mapping left; EINTR without exception is retried."""
    child = run_case(
        "s_streams",
        "case_keyboard_interrupt_during_from_file_on_a_fifo",
        watchdog=30,
    )
    assert_survived(child)


def test_from_writer_and_from_prompt_hold() -> None:
    """HELD: writer raising / KI / keeping a slice (StreamError) / releasing; prompt without a
    tty -> OSError ENXIO.  NOTE (not verifiable here, no PKU): the writable memoryview given
    to the writer is usable from *another thread* on mprotect (it succeeds); on pku the same
    code would fault (rights are per thread), contrary to "code that passes on mprotect
    behaves the same on pku"."""
    child = run_case(
        "s_streams",
        "case_from_writer_and_from_prompt",
        watchdog=30,
    )
    assert_survived(child)
