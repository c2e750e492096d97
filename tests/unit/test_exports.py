"""What users see of the package: the names it exports, where they say they come from, and
that the README's API table and the errors paragraph name exactly those."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import pkeyguard
from tests.adversarial.support import run_case

README = Path(__file__).resolve().parents[2] / "README.md"


def test_public_classes_say_they_are_pkeyguards() -> None:
    for name in pkeyguard.__all__:
        obj = getattr(pkeyguard, name)
        if isinstance(obj, type):
            assert obj.__module__ == "pkeyguard", f"{name}.__module__ is {obj.__module__}"
    try:
        pkeyguard.PkeyGuard(rights=5)  # type: ignore[arg-type]
    except pkeyguard.ArgumentTypeError as exc:
        assert type(exc).__module__ == "pkeyguard"


def test_every_export_is_documented_and_every_documented_name_exported() -> None:
    text = README.read_text()
    api = text[text.index("## API") : text.index("## Backends")]
    documented = set(re.findall(r"`(?:pkeyguard\.)?([A-Za-z_][A-Za-z0-9_]*)", api))
    for name in pkeyguard.__all__:
        assert name in documented, f"{name} is exported but not in README's API section"
    # Every name the table introduces (its first column) is exported; allocator.X and g.X
    # name attributes, the rest are top-level names.
    for row in re.findall(r"^\| (.+?) \|", api, re.M):
        for name in re.findall(r"`(?:pkeyguard\.)?([A-Za-z_][A-Za-z0-9_]*)(?![.\w])", row):
            if name not in ("g",):
                assert name in pkeyguard.__all__, f"README's API table names {name}: not exported"


def test_old_names_warn_but_work() -> None:
    with pytest.warns(DeprecationWarning, match="KeyStateError"):
        old = pkeyguard.PkeyGuardError
    assert old is pkeyguard.KeyStateError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pkeyguard.KeyStateError is not None  # the new name does not warn


def test_wrong_types_raise_type_errors() -> None:
    calls: list[Callable[[], object]] = [
        lambda: pkeyguard.PkeyGuard(rights="ReadWrite"),  # type: ignore[arg-type]
        lambda: pkeyguard.PkeyGuard(name=5),  # type: ignore[arg-type]
        lambda: pkeyguard.RegionGuard("8"),  # type: ignore[call-overload]
        lambda: pkeyguard.RegionGuard(8, access=3),  # type: ignore[call-overload]
        lambda: pkeyguard.Secret("8"),  # type: ignore[arg-type]
        lambda: pkeyguard.Secret(8, allocator=pkeyguard.allocator.Mmap()),  # type: ignore[arg-type]
        lambda: pkeyguard.isolated(allow=[object()]),  # type: ignore[list-item]
        lambda: pkeyguard.allocator.Secure(canary_size="16"),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
    with pkeyguard.RegionGuard(8) as region, pkeyguard.PkeyGuard() as key:
        assoc = key.associate(region)
        with pytest.raises(pkeyguard.ArgumentTypeError):
            assoc.set_access_rights("ReadWrite")  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            key.associate(object())  # type: ignore[arg-type]


def test_system_call_errors_carry_errno() -> None:
    for cls in (pkeyguard.MprotectError, pkeyguard.KeyExhaustedError):
        exc = cls(28, "No space left on device")
        assert exc.errno == 28 and exc.strerror == "No space left on device", cls
        assert isinstance(exc, OSError)
    assert issubclass(pkeyguard.KeyExhaustedError, pkeyguard.KeyStateError)


CHILD = "tests.unit.children.h_exports"


def test_a_subinterpreter_cannot_load_the_core_or_break_the_main_interpreters() -> None:
    # The C core's state (registered rights and errors, open keys, the fault reporter) is
    # process-wide. A legacy subinterpreter shares the GIL, so Py_mod_multiple_interpreters
    # does not stop it; before, it loaded its own copy of the package, re-registered its own
    # PkeyPermissions, and the main interpreter's set_access_rights() then refused its own
    # enum members.
    child = run_case(CHILD, "case_subinterpreter")
    assert child.returncode == 0, child.stderr
    assert "refused:" in child.stdout and "main interpreter" in child.stdout, child.stdout
    assert "main interpreter still works" in child.stdout, child.stdout


def test_importing_the_package_twice_is_refused_and_leaves_the_first_working() -> None:
    child = run_case(CHILD, "case_import_twice")
    assert child.returncode == 0, child.stderr
    for line in ("package refused:", "core refused:", "direct call refused:", "still works"):
        assert line in child.stdout, child.stdout
