"""The adversarial suite runs on the mprotect backend, like tests/unit: every attack runs in a
fresh child interpreter (tests.adversarial.support.run_case), which inherits the choice.

It also marks what runs again in the PKU guest (``pku_guest``, registered in pyproject.toml):
tools/test.sh's guest step is ``pytest -m pku_guest tests/hw tests/adversarial tests/unit``
with the pku backend forced.  :data:`PKU_GUEST` is the one list of those files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")

import pkeyguard  # the backend is chosen above, before the first import

__all__ = ["PKU_GUEST", "pkeyguard"]

_TESTS = Path(__file__).resolve().parent.parent

#: The tests that run in the PKU guest too, as paths under tests/ (a directory ends with "/").
#: The hardware suite; classes 1, 3, 4 and 7 of the adversarial suite, which depend on how
#: rights are switched and memory is released; the secret-memory and fork cases (a fork
#: child's zero pages must carry the key); and issue 18's attacks that depend on the backend,
#: the kernel or secret memory (the others, and the cases that inject failures into the
#: mprotect backend's switches, run on the host only).  The nested-reveal fork count needs
#: more than pku's 15 keys and runs on mprotect.
PKU_GUEST = (
    "hw/",
    "adversarial/test_c01_view_conversions.py",
    "adversarial/test_c03_thread_end_and_fork.py",
    "adversarial/test_c04_buffer_exports.py",
    "adversarial/test_c07_finalizers.py",
    "unit/test_secret_fork.py",
    "unit/test_secretmem.py",
    "adversarial/test_r2_backing.py",
    "adversarial/test_r2_costs.py",
    "adversarial/test_r2_fork.py",
    "adversarial/test_r2_fork_release.py",
    "adversarial/test_r2_fork_views.py",
    "adversarial/test_r2_guard_exits.py",
    "adversarial/test_r2_half_made.py",
    "adversarial/test_r2_kept_views.py",
    "adversarial/test_r2_pinned_reuse.py",
    "adversarial/test_r2_reentry.py",
    "adversarial/test_r2_release_failures.py",
    "adversarial/test_r2_review_b.py",
    "adversarial/test_r2_secret_key.py",
    "adversarial/test_r2_spacers.py",
    "adversarial/test_r2_wipe.py",
)


def in_pku_guest(path: Path) -> bool:
    """Whether the test file at ``path`` is one :data:`PKU_GUEST` names."""
    try:
        rel = path.resolve().relative_to(_TESTS).as_posix()
    except ValueError:
        return False
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in PKU_GUEST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every collected item of the session, tests/unit and tests/hw included when they are
    # collected with tests/adversarial (as the guest step does).
    for item in items:
        if in_pku_guest(item.path):
            item.add_marker(pytest.mark.pku_guest)
