"""Issue 18, class 5: no call that can block runs while a secret's guard is open.

``from_fd``/``from_file``/``from_prompt`` waited with ``poll(POLLIN | POLLPRI)`` and then
read with a blocking ``readv`` inside the secret's ReadWrite guard: a TCP urgent byte, or a
second reader that takes the data between the two calls, left the reader blocked in the
guard, and on the mprotect backend the secret open to every thread for as long as the peer
stalled.  Children: ``children/r2_blocking.py``.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("how", ["from_fd", "from_stream"])
def test_tcp_urgent_byte_does_not_hold_the_secret_open(how: str) -> None:
    assert_survived(run_case("r2_blocking", "case_tcp_urgent_byte", params={"how": how}))


@pytest.mark.parametrize("kind", ["pipe", "stream", "fifo", "unix", "tty"])
def test_a_second_reader_taking_the_data_does_not_hold_the_secret_open(kind: str) -> None:
    assert_survived(
        run_case("r2_blocking", "case_second_reader_takes_the_data", params={"kind": kind})
    )


def test_the_blocking_flag_survives_keyboard_interrupts() -> None:
    assert_survived(
        run_case(
            "r2_blocking",
            "case_blocking_flag_survives_interrupts",
            params={"seed": 18, "rounds": 400},
        )
    )


def test_an_uncached_regular_file_is_prefetched_outside_the_guard() -> None:
    assert_survived(run_case("r2_blocking", "case_uncached_regular_file"))


def test_a_nonblocking_descriptor_is_still_refused_at_once() -> None:
    assert_survived(run_case("r2_blocking", "case_nonblocking_descriptor_still_refused"))
