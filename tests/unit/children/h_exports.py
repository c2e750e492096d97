"""Child programs of ``tests/unit/test_exports.py``: the C core's process-wide state against a
subinterpreter and a second import of the package."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from pkeyguard import AccessPermissions, PkeyGuard, PkeyPermissions, RegionGuard, _core
from tests.childhelpers import say

# What the subinterpreter runs: a function of a module of its own (this one imports pkeyguard).
INNER = (
    "from tests.unit.children.h_exports_subinterpreter import case_in_a_subinterpreter\n"
    "case_in_a_subinterpreter()\n"
)


def case_subinterpreter() -> None:
    region = RegionGuard(4096, AccessPermissions.ReadWrite)
    assoc = PkeyGuard(PkeyPermissions.NoAccess).associate(region)
    interpreters: Any
    try:
        interpreters = importlib.import_module("_interpreters")
    except ImportError:  # CPython 3.11 and 3.12
        interpreters = importlib.import_module("_xxsubinterpreters")
        interpreters.run_string(interpreters.create(isolated=False), INNER)
    else:
        interpreters.run_string(interpreters.create("legacy"), INNER)
    sys.stdout.flush()
    with assoc.set_access_rights(PkeyPermissions.ReadWrite) as guard:
        guard.mut_ref_guard()[0] = 7
    say("main interpreter still works")


def case_import_twice() -> None:
    region = RegionGuard(4096, AccessPermissions.ReadWrite)
    assoc = PkeyGuard(PkeyPermissions.NoAccess).associate(region)
    saved = {n: m for n, m in sys.modules.items() if n.startswith("pkeyguard")}
    for name in [n for n in saved if n != "pkeyguard._core"]:
        del sys.modules[name]
    try:
        importlib.import_module("pkeyguard")
    except ImportError as exc:
        say("package refused:", exc)
    del sys.modules["pkeyguard._core"]
    try:
        importlib.import_module("pkeyguard._core")
    except ImportError as exc:
        say("core refused:", exc)
    sys.modules.update(saved)
    try:
        _core._register_rights((1, 2, 3), (int, int, int))
    except ImportError as exc:
        say("direct call refused:", exc)
    with assoc.set_access_rights(PkeyPermissions.ReadWrite) as guard:
        guard.mut_ref_guard()[0] = 7
    say("first import still works")
