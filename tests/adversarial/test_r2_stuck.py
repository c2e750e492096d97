"""Attack round two, stuck guards: an outer exit over a stuck guard retries it (no
``GuardOrderError``), and ``Secret.close()`` ends a stuck guard that sits under a later one.

The child program is ``children/r2_stuck.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.adversarial.support import assert_survived, run_case

pytestmark = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") != "mprotect",
    reason="the mprotect backend's exits (on pku an exit is a WRPKRU, which cannot fail)",
)


def _run(case: str, **params: object) -> None:
    assert_survived(run_case("r2_stuck", case, params=params, failinject=True))


@pytest.mark.parametrize("retry", ["ok", "fails"])
@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("guard", "other"),
        ("guard", "same"),
        ("guard", "reveal"),
        ("isolated", "other"),
        ("isolated", "reveal"),
        ("reveal", "other"),
        ("reveal", "reveal"),
    ],
)
def test_outer_exit_retries_stuck(outer: str, inner: str, retry: str) -> None:
    _run("case_outer_exit_retries_stuck", outer=outer, inner=inner, retry=retry)


@pytest.mark.parametrize("end", ["close", "drop"])
@pytest.mark.parametrize("op", ["reveal", "hmac"])
def test_close_under_later_guard(op: str, end: str) -> None:
    _run("case_close_under_later_guard", op=op, end=end)


@pytest.mark.parametrize("below", ["none", "ro"])
def test_stuck_removed_from_middle(below: str) -> None:
    _run("case_stuck_removed_from_middle", below=below)
