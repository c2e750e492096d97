"""Trickling streams (cost), from_prompt on a pty, exit with daemons, drop inside reveal.
The child programs are ``children/s_misc.py``."""

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("mode", ["ok", "long", "sigint", "empty"])
def test_from_prompt_on_a_pty(mode: str) -> None:
    """HELD: no echo, echo restored after Ctrl-C / too long / empty; the over-long line is
    drained, not left for the next reader."""
    proc = run_case(
        "s_misc",
        "case_from_prompt_on_a_pty",
        params={"mode": mode},
        timeout=30,
        env={"PKEYGUARD_BACKEND": "mprotect"},
    )
    out = proc.stdout
    assert "hunter2" not in out.split("GOT")[0].split("Pw:")[-1], out  # not echoed
    assert "ECHO True" in out, out
    expect = {
        "ok": "GOT 7 True",
        "long": "RAISED StreamError",
        "sigint": "RAISED KeyboardInterrupt",
        "empty": "RAISED RegionError",
    }[mode]
    assert expect in out, out


@pytest.mark.parametrize("mode", ["reveal", "hmac", "stream", "fd", "churn"])
def test_interpreter_exit_with_daemons_using_secrets(mode: str) -> None:
    """HELD: exit while daemon threads sit in reveal()/hmac()/from_stream()/from_fd() or
    create and close secrets: no crash, no traceback."""
    child = run_case(
        "s_misc",
        "case_interpreter_exit_with_daemons_using_secrets",
        params={"mode": mode},
        watchdog=30,
        timeout=40,
    )
    assert_survived(child, quiet=True)


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap"])
def test_dropped_inside_reveal_is_wiped_when_the_block_ends(backing: str) -> None:
    """HELD: a Secret dropped inside reveal() (same thread, and a thread that ended inside
    it) is zeroed (hook sees zeros) once the block ends."""
    child = run_case(
        "s_misc",
        "case_dropped_inside_reveal_is_wiped_when_the_block_ends",
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)
