"""Fixtures shared by tests/unit and tests/hw (no pkeyguard import here: each suite's
conftest picks the backend before pkeyguard is imported)."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.buildcheck import ALLOW_ENV, build_problem

NATIVE = Path(__file__).resolve().parent / "native"

# Fail fast on an in-place build older than its C sources (tests/buildcheck.py): one line
# saying what to run, instead of failures that test the old core.  Here, at import, rather
# than in pytest_configure: the suites' conftests import pkeyguard before that hook runs, and a
# stale core may not even import.  (A conftest that raises is reported as an ImportError with
# a traceback, hence the message and SystemExit.)
if not os.environ.get(ALLOW_ENV):
    _problem = build_problem()
    if _problem is not None:
        sys.stderr.write(f"ERROR: {_problem}\n")
        raise SystemExit(pytest.ExitCode.USAGE_ERROR)

# Hypothesis profiles: `dev` (the default: a bare `pytest` stays under a minute), `ci` (what
# tools/test.sh runs), `long` (for a night).  HYPOTHESIS_PROFILE picks one; the stateful tests
# read their example counts from tests/profiles.py.
for _name, _examples in (("dev", 50), ("ci", 200), ("long", 2000)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def faultprobe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the test-only C helper: a fault reporter, a handler-PKRU recorder, and plain
    native functions that read or write a pointer they are handed (the "untrusted" code)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "the test suite needs a C compiler for its native helper"
    out = tmp_path_factory.mktemp("probe") / "faultprobe.so"
    subprocess.run(
        [
            cc,
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            str(NATIVE / "faultprobe.c"),
            "-o",
            str(out),
        ],
        check=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def faultprobe(faultprobe_path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(faultprobe_path)
    lib.faultprobe_handler_pkru.restype = ctypes.c_uint32
    lib.faultprobe_read.argtypes = [ctypes.c_void_p]
    lib.faultprobe_read.restype = ctypes.c_int
    return lib


#: What runs again in the PKU guest (the ``pku_guest`` marker, registered in pyproject.toml).
_TESTS = Path(__file__).resolve().parent

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
    # tools/test.sh's guest step is `pytest -m pku_guest tests/hw tests/adversarial tests/unit`
    # with the pku backend forced; any one suite can be selected the same way.
    for item in items:
        if in_pku_guest(item.path):
            item.add_marker(pytest.mark.pku_guest)


def pytest_report_header() -> str:
    """The kernel under test, in every log (the PKU guest's kernel is pinned in pkeyguard_vm,
    and a log must say which one a run tested)."""
    return f"kernel: {platform.release()}"
