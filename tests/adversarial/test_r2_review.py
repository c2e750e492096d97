"""Issue 18, review round (guard side): wiping and view accesses after a narrowing that
failed, and the no-access fallback under a live buffer export.

The child program is ``children/r2_review.py``; every case injects mprotect failures with the
shim and asserts that they happened; a child killed by a signal fails the test.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.adversarial.support import SECRET_BACKINGS, assert_survived, run_case

pytestmark = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") != "mprotect",
    reason="the mprotect backend's switches (on pku they are WRPKRU, which cannot fail)",
)

ERRNOS = [errno.ENOMEM, errno.EAGAIN]
IDS = ["ENOMEM", "EAGAIN"]


def _run(case: str, **params: object) -> None:
    assert_survived(run_case("r2_review", case, params=params, failinject=True))


@pytest.mark.parametrize("backing", SECRET_BACKINGS)
@pytest.mark.parametrize("how", ["close", "interpreter_exit"])
def test_wipe_after_a_double_failed_exit(how: str, backing: str) -> None:
    _run("case_wipe_after_a_double_failed_exit", errno=errno.ENOMEM, how=how, backing=backing)


@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_export_kept_across_a_failed_exit(err: int) -> None:
    _run("case_export_kept_across_a_failed_exit", errno=err)


@pytest.mark.parametrize("skip", [0, 1, 2])
@pytest.mark.parametrize("err", ERRNOS, ids=IDS)
def test_view_settle_on_its_own_region(err: int, skip: int) -> None:
    _run("case_view_settle_on_its_own_region", errno=err, skip=skip)


def test_view_settle_is_one_mprotect() -> None:
    _run("case_view_settle_is_one_mprotect", errno=errno.ENOMEM)
