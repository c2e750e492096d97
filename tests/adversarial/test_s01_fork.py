"""fork: every use of an inherited Secret must raise SecretUnavailableError (README
"fork, spawn and multiprocessing"; CHANGELOG: fixed "a fork child read an inherited Secret
as zeros, silently (an HMAC with an all-zero key)").  The child programs are
``children/s_fork.py``."""

import sys

import pytest

from tests.adversarial.support import assert_survived, run_case

BACKINGS = ["memfd_secret", "mmap"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_fork_inside_reveal_child_view_must_not_read_zeros(backing: str) -> None:
    """DEFECT: a fork inside `with secret.reveal() as key:` gives the child a live view that
    silently reads zeros: hmac.digest(key, ...) in the child is an HMAC with an all-zero key,
    exactly the bug the CHANGELOG says is fixed.  Promised: SecretUnavailableError."""
    child = run_case(
        "s_fork",
        "case_fork_inside_reveal_child_view_must_not_read_zeros",
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)


@pytest.mark.parametrize("backing", BACKINGS)
def test_every_method_in_fork_child(backing: str) -> None:
    """HELD: reveal/equals/hmac/write/with raise SecretUnavailableError, close works, len/repr
    fine, copy/pickle refused; the parent's secret is intact."""
    child = run_case(
        "s_fork", "case_every_method_in_fork_child", params={"backing": backing}, watchdog=30
    )
    assert_survived(child)


def test_fork_during_from_stream_from_writer_from_chunks() -> None:
    """HELD: a fork inside readinto / the writer / the chunk iterator: the child gets
    SecretUnavailableError, the parent its full secret."""
    child = run_case("s_fork", "case_fork_during_from_stream_from_writer_from_chunks", watchdog=30)
    assert_survived(child)


def test_multiprocessing_fork_pool_gets_the_error() -> None:
    """HELD: Pool(fork) hands SecretUnavailableError back; spawn refuses to pickle."""
    child = run_case("s_fork", "case_multiprocessing_fork_pool_gets_the_error", watchdog=60)
    assert_survived(child)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ in Python code needs 3.12")
def test_fork_inside_hmac_msg_buffer_gives_the_child_a_zero_key_hmac() -> None:
    """DEFECT (public API only, Python 3.12+): Secret.hmac(msg) reveals the key, then
    hmac.digest converts msg; a msg whose __buffer__ forks makes the child finish the HMAC
    with the zero pages: s.hmac() in the child silently returns HMAC(all-zero key, msg).
    Promised: SecretUnavailableError on every use in a fork child."""
    proc = run_case(
        "s_fork",
        "case_fork_inside_hmac_msg_buffer",
        timeout=30,
        env={"PKEYGUARD_BACKEND": "mprotect"},
    )
    assert "parent real" in proc.stdout, proc.stdout + proc.stderr
    assert "child refused" in proc.stdout, "child: " + proc.stdout + proc.stderr


def test_fork_from_a_thread_and_grandchildren() -> None:
    """HELD: fork from a non-main thread; a child's own secret is usable there and
    unavailable in the grandchild; closes in descendants never touch the parent's pages."""
    child = run_case("s_fork", "case_fork_from_a_thread_and_grandchildren", watchdog=30)
    assert_survived(child)
