"""Issue 18, class 2 (guard side): every mprotect of every guard entry and exit, and of
``isolated()``'s, failed in turn (ENOMEM, EAGAIN, EINTR; once, or from there on).

The child program is ``children/r2_failclosed.py``: after each failure no page is more open
than before, the core's bookkeeping matches the pages, and repeating the operation without the
failure ends where a clean run ends.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.adversarial.support import assert_survived, run_case

pytestmark = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") != "mprotect",
    reason="the mprotect backend's switches (on pku they are WRPKRU, which cannot fail)",
)

ERRNOS = [errno.ENOMEM, errno.EAGAIN, errno.EINTR]
IDS = ["ENOMEM", "EAGAIN", "EINTR"]


def _run(case: str, **params: object) -> None:
    assert_survived(run_case("r2_failclosed", case, params=params, failinject=True))


@pytest.mark.parametrize("count", [1, -1], ids=["once", "always"])
@pytest.mark.parametrize("skip", [0, 1, 2])
@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_guard_entry(err: int, skip: int, count: int) -> None:
    _run("case_guard_entry", errno=err, skip=skip, count=count)


@pytest.mark.parametrize("nested", [False, True], ids=["alone", "nested"])
@pytest.mark.parametrize("count", [1, -1], ids=["once", "always"])
@pytest.mark.parametrize("skip", [0, 1, 2])
@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_guard_exit(err: int, skip: int, count: int, nested: bool) -> None:
    _run("case_guard_exit", errno=err, skip=skip, count=count, nested=nested)


@pytest.mark.parametrize("count", [1, -1], ids=["once", "always"])
@pytest.mark.parametrize("skip", [0, 1, 2, 3])
def test_out_of_order_exit(skip: int, count: int) -> None:
    _run("case_out_of_order_exit", errno=errno.ENOMEM, skip=skip, count=count)


@pytest.mark.parametrize("count", [1, -1], ids=["once", "always"])
@pytest.mark.parametrize("skip", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_isolated_entry(err: int, skip: int, count: int) -> None:
    _run("case_isolated_entry", errno=err, skip=skip, count=count)


@pytest.mark.parametrize("count", [1, -1], ids=["once", "always"])
@pytest.mark.parametrize("skip", [0, 1, 2, 3, 4, 5])
def test_isolated_exit(skip: int, count: int) -> None:
    _run("case_isolated_exit", errno=errno.ENOMEM, skip=skip, count=count)


def test_thread_ends_inside_a_guard() -> None:
    _run("case_thread_ends_inside_a_guard", errno=errno.ENOMEM, skip=0, count=-1)


@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_view_on_a_mixed_key(err: int) -> None:
    _run("case_view_on_a_mixed_key", errno=err)
