"""PkeyPermissions: the rights table the core exports, and the metaclass that makes naming a
member cheap without changing what the enum does."""

from __future__ import annotations

import enum
import pickle
from typing import Any

import pytest

from pkeyguard import PkeyPermissions, _core


class Reference(enum.Enum):
    """The same members on a plain Enum: what PkeyPermissions must behave like."""

    NoAccess = "NoAccess"
    ReadOnly = "ReadOnly"
    ReadWrite = "ReadWrite"


def test_the_rights_table_is_the_cores() -> None:
    assert _core.RIGHTS == (("NoAccess", 1), ("ReadOnly", 2), ("ReadWrite", 0))
    assert [p.name for p in PkeyPermissions] == [name for name, _ in _core.RIGHTS]
    assert [p.level for p in PkeyPermissions] == [0, 1, 2]
    assert [p.pkru_bits for p in PkeyPermissions] == [1, 2, 0]
    # Access-disable wins over write-disable; bits of other keys do not matter.
    got = [PkeyPermissions.from_pkru_bits(b).name for b in (0, 1, 2, 3, 4 | 2)]
    assert got == ["ReadWrite", "NoAccess", "ReadOnly", "NoAccess", "ReadOnly"]


def test_members_are_looked_up_by_the_core_metaclass() -> None:
    assert type(PkeyPermissions) is _core.RightsType
    assert issubclass(_core.RightsType, enum.EnumType)
    assert PkeyPermissions.ReadWrite is PkeyPermissions["ReadWrite"] is PkeyPermissions("ReadWrite")


@pytest.mark.parametrize(
    "name",
    [
        "NoAccess",
        "ReadOnly",
        "ReadWrite",
        "__members__",
        "__name__",
        "__doc__",
        "_member_map_",
        "missing",
        "__missing__",
        "mro",
    ],
)
def test_attribute_lookup_is_an_enums(name: str) -> None:
    def outcome(cls: Any) -> object:
        try:
            value = getattr(cls, name)
        except AttributeError:
            return AttributeError
        if isinstance(value, cls):
            return ("member", value.name)
        return type(value).__name__

    assert outcome(PkeyPermissions) == outcome(Reference)


def test_the_enum_still_behaves_as_one() -> None:
    assert len(PkeyPermissions) == 3 and PkeyPermissions.ReadOnly in PkeyPermissions
    assert list(PkeyPermissions.__members__) == ["NoAccess", "ReadOnly", "ReadWrite"]
    assert pickle.loads(pickle.dumps(PkeyPermissions.ReadOnly)) is PkeyPermissions.ReadOnly
    with pytest.raises(AttributeError):
        setattr(PkeyPermissions, "ReadWrite", PkeyPermissions.ReadOnly)  # noqa: B010
    with pytest.raises(ValueError):
        PkeyPermissions("Write")
    assert hash(PkeyPermissions.ReadWrite) == object.__hash__(PkeyPermissions.ReadWrite)
