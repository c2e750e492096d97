"""Secrets and fork(): a child never gets a parent's secret bytes, says so clearly, and
never reports a canary overflow that did not happen.

Every case runs in a child interpreter (a signal, a hang or an unexpected line fails it), on
both backings of secret memory; the child programs are ``children/s_secret_fork.py``.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import MARKER, assert_survived, run_case

BACKINGS = ["memfd_secret", "mmap"]

CHILD = "tests.unit.children.s_secret_fork"


def run(case: str, backing: str) -> tuple[str, str]:
    """Run ``case`` of the child module; it must exit 0 with nothing on stderr about an
    exception.  Its stdout (without the runner's marker) and stderr."""
    child = run_case(CHILD, case, params={"backing": backing})
    assert_survived(child)
    assert "Traceback" not in child.stderr and "Exception ignored" not in child.stderr, child
    lines = child.stdout.split("\n")
    assert lines[-2:] == [MARKER, ""], child
    return "\n".join(lines[:-2]) + "\n", child.stderr


@pytest.mark.parametrize("backing", BACKINGS)
def test_os_fork_child_gets_a_clear_error_and_no_bytes(backing: str) -> None:
    out, _ = run(
        "case_os_fork_child_gets_a_clear_error_and_no_bytes",
        backing,
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_child_that_exits_normally_leaves_the_parent_intact(backing: str) -> None:
    """The child's interpreter exit (atexit wipe, collection) touches only its own pages."""
    out, _ = run(
        "case_child_that_exits_normally",
        backing,
    )
    assert out.split() == ["child", "0", "parent", "b'hunter2-hunter2'", "closed"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_no_false_canary_error_when_a_pid_comes_back(backing: str) -> None:
    """A pid is no proof of identity: pids are reused, and a pid namespace counts from 1
    again.  Here the secret is made by pid 1 of a namespace (a container's entry point) and
    closed, in a grandchild, by pid 1 of a nested one.  The old check (`pid != getpid()`)
    took the grandchild's zero pages for the maker's and raised CanaryError."""
    out, _ = run(
        "case_no_false_canary_error_when_a_pid_comes_back",
        backing,
    )
    assert out.strip() == "result 0", out


@pytest.mark.parametrize("backing", BACKINGS)
def test_multiprocessing_fork_context(backing: str) -> None:
    out, err = run(
        "case_multiprocessing_fork_context",
        backing,
    )
    assert out.split("\n")[:3] == [
        "process 7",
        "pool SecretUnavailableError",
        "parent b'hunter2-hunter2'",
    ], (out, err)


@pytest.mark.parametrize("backing", BACKINGS)
def test_fork_inside_reveal(backing: str) -> None:
    """The forking thread's reveal() stays active in the child, over zero pages: the child
    can leave the block, but its view refuses to be read (it would read zeros as if they were
    the secret: an HMAC with an all-zero key), as a buffer export too."""
    out, _ = run(
        "case_fork_inside_reveal",
        backing,
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]


def test_memfd_secret_pages_are_not_shared_with_the_child() -> None:
    """A shared mapping would give the child the parent's pages: it could read them, and its
    close() would zero the parent's secret (whose own close() would then report an overflow
    that never happened)."""
    out, _ = run(
        "case_memfd_secret_pages_are_not_shared_with_the_child",
        "memfd_secret",
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]
