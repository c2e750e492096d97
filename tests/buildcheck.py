"""Is the C build that the tests would import older than its sources?

Only a source tree's in-place build is checked (``pip install -e .`` or ``python setup.py
build_ext --inplace``): the package ``import pkeyguard`` finds has its C sources beside it.
An installed wheel has none, and is never called stale.

setup.py builds ``_terminal`` from ``_terminal.c`` and ``_core`` from every other ``.c``
file; both depend on every header (its ``depends``), so a header newer than a build makes it
stale, and a ``.c`` file makes stale only the extension built from it (``build_ext`` rebuilds
only that one).

Nothing here imports pkeyguard: the suites' conftests choose the backend before it is.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

__all__ = ["ALLOW_ENV", "REBUILD", "build_problem", "package_dir", "stale_build"]

#: What to run after changing the C core (CONTRIBUTING.md, "changed X, run Y").
REBUILD = "python setup.py build_ext --inplace"

#: Set to 1 to run the tests against a build older than its sources anyway.
ALLOW_ENV = "PKEYGUARD_STALE_BUILD_OK"


def package_dir() -> Path | None:
    """The directory of the pkeyguard that ``import pkeyguard`` would load (not imported)."""
    spec = importlib.util.find_spec("pkeyguard")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _built(package: Path, extension: str) -> Path | None:
    """The file ``import pkeyguard.<extension>`` would load, by this interpreter's suffixes
    in the order the import system tries them."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package / f"{extension}{suffix}"
        if path.is_file():
            return path
    return None


def _where(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def stale_build(package: Path | None) -> str | None:
    """One line saying what is stale and what to run, or None when the build is fresh or
    ``package`` is not a source tree."""
    if package is None or not (package / "_core.c").is_file():
        return None  # an installed package (a wheel): nothing to compare with
    headers = sorted(package.rglob("*.h"))  # any *.c.h too, and any folder of the core's
    sources = sorted(package.rglob("*.c"))
    root = package.parent.parent  # src/pkeyguard -> the directory of setup.py
    run = REBUILD if Path.cwd() == root else f"cd {root} && {REBUILD}"
    for extension in ("_core", "_terminal"):
        built = _built(package, extension)
        if built is None:
            return (
                f"pkeyguard.{extension} is not built for this Python in {_where(package)}: "
                f"run `{run}` (or `pip install -e .`)"
            )
        inputs = [
            *(s for s in sources if (s.name == "_terminal.c") == (extension == "_terminal")),
            *headers,
        ]
        newest = max(inputs, key=lambda p: p.stat().st_mtime_ns)
        if newest.stat().st_mtime_ns > built.stat().st_mtime_ns:
            return (
                f"stale build: {_where(built)} is older than {newest.name}; run `{run}` "
                f"(or `pip install -e .`), or set {ALLOW_ENV}=1 to test the old build"
            )
    return None


def build_problem() -> str | None:
    """What is wrong with the pkeyguard the tests would import, in one line, or None."""
    package = package_dir()
    if package is None:
        return (
            "pkeyguard is not importable: run `pip install -e .` here (a source tree's src/ "
            "is not on the path by itself)"
        )
    return stale_build(package)
