"""The fast paths of 'with assoc.set_access_rights(PkeyPermissions.ReadWrite):' (issue 20):
RightsType's member cache (3.12-3.14), the metaclass that leaves CPython 3.15+ to specialise
member loads, and AssociatedRegion's own set_access_rights.  Each test fails if the fast
path changes what the line means; the speed itself is the benchmark's (benchmarks/)."""

from __future__ import annotations

import copy
import dis
import enum
import mmap
import pickle
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pkeyguard import AccessPermissions, PkeyGuard, PkeyPermissions, RegionGuard, _core
from pkeyguard.pkey import AssociatedRegion, NoAccessGuard, ReadGuard, WriteGuard

# The members' lookup path: RightsType's own tp_getattro up to 3.14, type's from 3.15.
OWN_GETATTRO = sys.version_info < (3, 15)


def fresh_rights_enum() -> Any:
    """A new enum on RightsType, so that a test may change it (PkeyPermissions stays)."""

    class T(enum.Enum, metaclass=_core.RightsType):
        A = "a"
        B = "b"

    return T


@pytest.fixture
def assoc() -> Iterator[AssociatedRegion[Any]]:
    region: RegionGuard[Any] = RegionGuard(mmap.PAGESIZE, AccessPermissions.ReadWrite)
    key = PkeyGuard(PkeyPermissions.NoAccess)
    a = key.associate(region)
    yield a
    key.close()
    region.close()


def test_the_metaclass_has_its_own_lookup_only_where_cpython_cannot_specialise() -> None:
    assert ("__getattribute__" in vars(_core.RightsType)) is OWN_GETATTRO
    assert type(PkeyPermissions) is _core.RightsType


def test_members_by_name_are_the_members_every_time() -> None:
    # Repeated loads go through the cache (3.12-3.14) or the specialised instruction (3.15+).
    members = [m for _ in range(200) for m in (PkeyPermissions.ReadWrite, PkeyPermissions.ReadOnly)]
    assert members[0] is PkeyPermissions["ReadWrite"] and members[1] is PkeyPermissions["ReadOnly"]
    assert all(m is (members[0] if i % 2 == 0 else members[1]) for i, m in enumerate(members))
    assert [PkeyPermissions.NoAccess.name, PkeyPermissions.NoAccess.level] == ["NoAccess", 0]
    names = ("NoAccess", "ReadOnly", "ReadWrite")
    assert list(PkeyPermissions) == [PkeyPermissions[n] for n in names]
    for m in PkeyPermissions:
        assert pickle.loads(pickle.dumps(m)) is m
        assert copy.copy(m) is m and copy.deepcopy(m) is m
        assert m == PkeyPermissions(m.value) and m != m.value
        assert {m: 1}[PkeyPermissions[m.name]] == 1


def test_a_cached_member_is_never_returned_once_the_class_changed() -> None:
    def scenario(cls: Any) -> list[object]:
        seen: list[object] = []
        a, b = cls.A, cls.B
        for _ in range(100):  # fill the cache (and the specialiser's, on 3.15)
            assert cls.A is a and cls.B is b
        type.__setattr__(cls, "A", "not a member any more")  # around EnumType's refusal
        seen.append(cls.A)
        type.__delattr__(cls, "B")
        try:
            seen.append(cls.B is b)  # 3.11's EnumType.__getattr__ still finds it
        except AttributeError:
            seen.append(AttributeError)
        type.__setattr__(cls, "B", "b again")
        seen.append(cls.B)
        return seen

    class Plain(enum.Enum):
        A = "a"
        B = "b"

    got = scenario(fresh_rights_enum())
    assert got == scenario(Plain)
    assert got[0] == "not a member any more" and got[2] == "b again"


def test_two_rights_enums_with_the_same_names_do_not_share_entries() -> None:
    T, U = fresh_rights_enum(), fresh_rights_enum()
    for _ in range(50):
        assert T.A is not U.A
        assert type(T.A) is T and type(U.A) is U
        assert T.B.value == U.B.value == "b"


def test_names_that_are_not_members_still_take_enums_path() -> None:
    T = fresh_rights_enum()
    assert T.__members__ == {"A": T.A, "B": T.B}
    for _ in range(50):  # a non-member name is never cached as one
        with pytest.raises(AttributeError):
            _ = T.C
    assert T.__name__ == "T"


@pytest.mark.skipif(
    sys.version_info < (3, 15) or not hasattr(dis, "get_instructions"),
    reason="CPython specialises enum member loads from 3.15 on (gh-95004)",
)
def test_cpython_specialises_the_member_load_from_315() -> None:
    def load(p: Any = PkeyPermissions) -> object:
        x = None
        for _ in range(300):
            x = p.ReadWrite
        return x

    for _ in range(5):
        assert load() is PkeyPermissions.ReadWrite
    ops = [i.opname for i in dis.get_instructions(load, adaptive=True)]
    assert "LOAD_ATTR_CLASS_WITH_METACLASS_CHECK" in ops, ops


def test_set_access_rights_is_the_associations_own_method(assoc: AssociatedRegion[Any]) -> None:
    # CPython specialises a C method call only when type(self) is the method's class.
    method = vars(AssociatedRegion)["set_access_rights"]
    assert type(assoc) is AssociatedRegion and method.__objclass__ is AssociatedRegion
    assert type(method) is type(vars(_core.Binding)["set_access_rights"])
    assert method.__doc__ == vars(_core.Binding)["set_access_rights"].__doc__
    # It is the same C function: a fresh guard of the class for the rights, every call.
    for rights, cls in (
        (PkeyPermissions.NoAccess, NoAccessGuard),
        (PkeyPermissions.ReadOnly, ReadGuard),
        (PkeyPermissions.ReadWrite, WriteGuard),
    ):
        g1, g2 = assoc.set_access_rights(rights), assoc.set_access_rights(rights)
        assert type(g1) is cls and g1 is not g2 and g1.rights is rights
        with g1:
            assert g1.active
        assert not g1.active
    with pytest.raises(TypeError):
        method(object(), PkeyPermissions.ReadWrite)
    with pytest.raises(_core_argtype()):
        assoc.set_access_rights("ReadWrite")  # type: ignore[call-overload]
    g = _core.Binding.set_access_rights(assoc, PkeyPermissions.ReadOnly)  # Binding's still works
    assert type(g) is ReadGuard


def _core_argtype() -> type[Exception]:
    from pkeyguard import ArgumentTypeError

    return ArgumentTypeError


@pytest.mark.parametrize("cls", [object, int, _core.Binding, AccessPermissions])
def test_register_association_takes_binding_subclasses_only(cls: Any) -> None:
    with pytest.raises(TypeError, match="needs a Binding subclass"):
        _core._register_association(cls)
