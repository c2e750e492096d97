"""Attack round two, F1/F2: guard exits that fail where no caller holds the guard.

The child program is ``children/r2_guard_exits.py``: after an injected ``mprotect`` failure
on the exit of a ``reveal()`` block, of the guards of ``Secret.hmac``/``equals``/``write``,
and of each fill's write guard, the secret is closed to every thread (or gone), no guard is
left on the thread, ``close()`` is not refused, and a failed fill raises ``MprotectError``.
"""

from __future__ import annotations

import os

import pytest

from tests.adversarial.support import assert_survived, run_case

mprotect_only = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_BACKEND", "mprotect") != "mprotect",
    reason="the mprotect backend's exits (on pku an exit is a WRPKRU, which cannot fail)",
)

COUNTS = [1, 2, -1]
COUNT_IDS = ["once", "twice", "always"]


def _run(case: str, **params: object) -> None:
    assert_survived(run_case("r2_guard_exits", case, params=params, failinject=True))


@mprotect_only
@pytest.mark.parametrize("then", ["reveal", "close"])
@pytest.mark.parametrize("count", COUNTS, ids=COUNT_IDS)
def test_reveal_exit_fails(count: int, then: str) -> None:
    _run("case_reveal_exit", count=count, then=then)


@mprotect_only
@pytest.mark.parametrize("op", ["hmac", "equals", "write"])
@pytest.mark.parametrize("count", COUNTS, ids=COUNT_IDS)
def test_secret_operation_exit_fails(count: int, op: str) -> None:
    _run("case_secret_op_exit", count=count, op=op)


@mprotect_only
@pytest.mark.parametrize(
    "fill", ["from_bytes", "from_chunks", "from_stream", "from_fd", "from_writer"]
)
@pytest.mark.parametrize("count", [1, 2, 3, -1], ids=["once", "twice", "thrice", "always"])
def test_fill_exit_fails(count: int, fill: str) -> None:
    _run("case_fill_exit", count=count, fill=fill)


def test_disassociate_by_a_secrets_key_says_why() -> None:
    assert_survived(run_case("r2_guard_exits", "case_disassociate_a_secrets_region_by_its_key"))


@mprotect_only
def test_an_entry_put_back_is_retried() -> None:
    _run("case_entry_put_back_retried")


@mprotect_only
def test_a_stuck_guard_is_left_by_the_next_exit() -> None:
    _run("case_stuck_guard_left_by_the_next_exit")


@mprotect_only
@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_view_reapply_is_never_narrowed(count: int) -> None:
    _run("case_view_reapply_is_never_narrowed", count=count)
