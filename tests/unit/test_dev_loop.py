"""The development loop: a stale in-place build stops pytest with one line saying what to
run (tests/buildcheck.py, called from tests/conftest.py), and the core's other build
configuration (``PKEYGUARD_BOUNDSLOT=0``) compiles and runs."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import buildcheck
from tests.buildcheck import ALLOW_ENV, build_problem, stale_build

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _tree(tmp_path: Path, *, built: bool = True, sources: bool = True) -> Path:
    """A package directory laid out like src/pkeyguard, every file an hour old."""
    package = tmp_path / "src" / "pkeyguard"
    package.mkdir(parents=True)
    names = ["__init__.py"]
    if sources:
        names += ["_core.c", "_faults.c", "_terminal.c", "_rights.h", "_keypool.c.h"]
    if built:
        names += [f"_core{SUFFIX}", f"_terminal{SUFFIX}"]
    hour_ago = time.time() - 3600
    for name in names:
        (package / name).write_text("")
        os.utime(package / name, (hour_ago, hour_ago))
    return package


def _touch(path: Path, age: float = 0.0) -> None:
    when = time.time() - age
    os.utime(path, (when, when))


def _rebuild(package: Path) -> None:
    """What build_ext does: the extensions are written after their sources."""
    for so in package.glob(f"*{SUFFIX}"):
        _touch(so)


def test_a_fresh_build_is_not_stale(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    _rebuild(package)
    assert stale_build(package) is None


@pytest.mark.parametrize("source", ["_core.c", "_faults.c"])
def test_a_core_source_newer_than_the_core_is_stale(tmp_path: Path, source: str) -> None:
    package = _tree(tmp_path)
    _touch(package / source)
    message = stale_build(package)
    assert message is not None
    assert f"_core{SUFFIX} is older than {source}" in message
    assert "python setup.py build_ext --inplace" in message
    assert "\n" not in message


def test_a_header_makes_both_extensions_stale(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    _touch(package / f"_core{SUFFIX}", age=-10)  # built after the header
    _touch(package / "_keypool.c.h")
    message = stale_build(package)
    assert message is not None and f"_terminal{SUFFIX} is older than _keypool.c.h" in message


def test_each_extension_is_compared_with_its_own_sources(tmp_path: Path) -> None:
    # build_ext rebuilds only the extension whose sources changed: _terminal, older than a
    # new _core.c, is still fresh.
    package = _tree(tmp_path)
    _touch(package / "_core.c", age=20)
    _touch(package / f"_core{SUFFIX}", age=10)
    assert stale_build(package) is None
    _touch(package / "_terminal.c")
    message = stale_build(package)
    assert message is not None and f"_terminal{SUFFIX} is older than _terminal.c" in message


def test_sources_in_a_folder_of_the_package_count(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    _rebuild(package)
    (package / "core").mkdir()
    (package / "core" / "keys.c").write_text("")
    _touch(package / "core" / "keys.c", age=-5)  # written after the build
    message = stale_build(package)
    assert message is not None and f"_core{SUFFIX} is older than keys.c" in message


def test_a_missing_build_says_what_to_run(tmp_path: Path) -> None:
    message = stale_build(_tree(tmp_path, built=False))
    assert message is not None
    assert "pkeyguard._core is not built for this Python" in message
    assert "build_ext --inplace" in message


def test_an_installed_package_is_never_stale(tmp_path: Path) -> None:
    # A wheel holds no C sources: its build is whatever it is.
    package = _tree(tmp_path, sources=False)
    assert stale_build(package) is None
    assert stale_build(None) is None


def test_the_imported_package_is_checked() -> None:
    # The check looks at the pkeyguard this run imports (here, whatever the suite runs on).
    spec = importlib.util.find_spec("pkeyguard")
    assert spec is not None and spec.origin is not None
    assert stale_build(Path(spec.origin).parent) is None  # else this run would have stopped


def test_a_package_that_cannot_be_found_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildcheck, "package_dir", lambda: None)
    message = build_problem()
    assert message is not None and "pkeyguard is not importable: run `pip install -e .`" in message


def _pytest_with(package_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest collecting tests/native (no tests: nothing but the root conftest runs), with
    ``package_root`` first on the path, so that it is the pkeyguard the check looks at."""
    environ = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    environ.update(PYTHONPATH=str(package_root), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", "tests/native"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_stops_at_once_on_a_stale_build(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    _rebuild(package)
    fresh = _pytest_with(package.parent)
    assert "stale build" not in fresh.stderr
    assert fresh.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, fresh.stdout + fresh.stderr

    _touch(package / "_faults.c", age=-5)
    stale = _pytest_with(package.parent)
    assert stale.returncode == pytest.ExitCode.USAGE_ERROR, stale.stdout + stale.stderr
    lines = stale.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: stale build: "), stale.stderr
    assert "build_ext --inplace" in lines[0]

    allowed = _pytest_with(package.parent, **{ALLOW_ENV: "1"})
    assert allowed.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, allowed.stderr


def test_core_builds_and_runs_without_boundslot(tmp_path: Path) -> None:
    """The guard's plain __enter__/__exit__ methods (``-DPKEYGUARD_BOUNDSLOT=0``, see
    _guardslots.h) are not the default build: build them with setup.py into a temporary
    directory, warnings as errors, and run a guard against that build in a child."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setup.py needs setuptools (a venv of Python 3.12+ has none)")
    if int(importlib.metadata.version("setuptools").split(".")[0]) < 77:
        # pyproject.toml's build requirement (its `license = "MIT"` is read by 77 and newer):
        # a fresh venv of 3.11 (tools/wheels.sh's) comes with an older one.
        pytest.skip("setup.py needs setuptools>=77 (pyproject.toml's build requirement)")
    lib, temp, package = tmp_path / "lib", tmp_path / "temp", tmp_path / "pkg" / "pkeyguard"
    environ = {k: v for k, v in os.environ.items() if k != "PKEYGUARD_SANITIZE"}
    environ.update(CFLAGS="-DPKEYGUARD_BOUNDSLOT=0", PKEYGUARD_WERROR="1")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", lib, "--build-temp", temp],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    assert "-DPKEYGUARD_BOUNDSLOT=0" in build.stdout + build.stderr, "CFLAGS did not reach cc"

    # The Python layer from the source tree, the extensions from this build.
    shutil.copytree(
        ROOT / "src" / "pkeyguard",
        package,
        ignore=shutil.ignore_patterns("*.so", "*.c", "*.h", "__pycache__"),
    )
    built = sorted((lib / "pkeyguard").glob("*.so"))
    assert {p.name.split(".")[0] for p in built} == {"_core", "_terminal"}, built
    for so in built:
        shutil.copy2(so, package / so.name)

    child = subprocess.run(
        [sys.executable, "-m", "tests.unit.boundslot_child", str(package), "method_descriptor"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(package.parent), "PKEYGUARD_BACKEND": "mprotect"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stdout + child.stderr
