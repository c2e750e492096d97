"""The shared argument checkers (``pkeyguard._checks``): each rule once, whatever entry point
uses it.  The entry points' own messages are pinned by their tests (test_region, test_secret,
test_pkey, the adversarial suite)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from pkeyguard import (
    AccessPermissions,
    ArgumentTypeError,
    ArgumentValueError,
    PkeyPermissions,
    RegionTypeError,
)
from pkeyguard._checks import (
    MAX_NAME_LENGTH,
    check_access,
    check_name,
    check_rights,
    exact_int,
    is_int,
)


class LyingInt(int):
    """An int subclass whose conversions lie (and say so if they are asked)."""

    asked: ClassVar[list[str]] = []

    def __index__(self) -> int:
        self.asked.append("__index__")
        return 1

    def __int__(self) -> int:
        self.asked.append("__int__")
        return 1


def test_exact_int_takes_an_int_subclass_value_without_asking_it() -> None:
    LyingInt.asked.clear()
    value = exact_int(LyingInt(40), ArgumentTypeError, "x must be an int, not {!r}")
    assert value == 40 and type(value) is int
    assert LyingInt.asked == []


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, b"1"])
def test_exact_int_refuses_what_is_not_an_int(value: object) -> None:
    assert not is_int(value)
    with pytest.raises(RegionTypeError) as info:
        exact_int(value, RegionTypeError, "size must be an int, not {!r}")
    assert str(info.value) == f"size must be an int, not {value!r}"


def test_the_enum_checkers_take_their_own_members_only() -> None:
    assert check_rights(PkeyPermissions.ReadOnly) is PkeyPermissions.ReadOnly
    assert check_access(AccessPermissions.ReadOnly) is AccessPermissions.ReadOnly
    with pytest.raises(ArgumentTypeError, match="rights must be a PkeyPermissions member"):
        check_rights(AccessPermissions.ReadOnly)
    with pytest.raises(RegionTypeError, match="access must be an AccessPermissions member"):
        check_access(PkeyPermissions.ReadOnly)
    with pytest.raises(RegionTypeError):
        check_access(int(AccessPermissions.ReadOnly))


def test_check_name_returns_an_exact_copy_and_refuses_what_a_terminal_would_run() -> None:
    class Name(str):
        def __str__(self) -> str:
            raise AssertionError("a method of the name ran")

    name = check_name(Name("key"))
    assert name == "key" and type(name) is str
    assert check_name(None) is None
    assert check_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH
    with pytest.raises(ArgumentValueError, match="at most 256 characters"):
        check_name("x" * (MAX_NAME_LENGTH + 1))
    with pytest.raises(ArgumentValueError, match=r"character 1 is '\\x1b'"):
        check_name("a\x1b[2J")
    with pytest.raises(RegionTypeError, match="name must be a str or None, not bytes"):
        check_name(b"key", RegionTypeError)
