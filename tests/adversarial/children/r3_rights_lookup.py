"""Issue 20's hot path, attacked (children of test_r3_rights_lookup.py): RightsType, the
metaclass of PkeyPermissions, answers member names from the class's dict in C (with a small
cache on 3.12-3.14).  Each case builds the same enums on ``params()["meta"]``: ``enum`` (a plain
``enum.EnumType`` subclass, the reference) or ``rights`` (``_core.RightsType``), and prints one
``RESULT`` line that the test compares between the two."""

from __future__ import annotations

import enum
import gc
import json
from typing import Any

from pkeyguard import _core
from tests.adversarial.childlib import params


class PlainMeta(enum.EnumType):
    """A metaclass of the plain kind that can be changed without touching every Enum."""


def meta() -> Any:
    return _core.RightsType if params()["meta"] == "rights" else PlainMeta


def via_get(self: object, obj: object, typ: object = None) -> str:
    return "via __get__"


def make(cls_name: str, members: dict[str, int], **extra: object) -> Any:
    """An enum with these members (and ``extra`` class attributes, e.g. ``__get__``) on
    meta(), through the metaclass protocol (names that a class statement cannot spell)."""
    M = meta()
    body = M.__prepare__(cls_name, (enum.Enum,))
    for key, value in {**members, **extra}.items():
        body[key] = value
    return M(cls_name, (enum.Enum,), body)


def report(value: object) -> None:
    print("RESULT", json.dumps(value), flush=True)


def case_member_class_with_get() -> None:
    # A member class with __get__: type.__getattribute__ calls it on the class-dict value.
    E = make("E", {"A": 1}, __get__=via_get)
    report([repr(E.A) for _ in range(5)])


def case_cached_member_changes_class() -> None:
    # Cache E.A, then give the member another class (one with __get__): a hit must notice.
    D = make("D", {}, __get__=via_get)
    E = make("E", {"A": 1})
    a = E.A
    hits = all(E.A is a for _ in range(50))
    a.__class__ = D
    report([hits, repr(E.A)])


def case_metaclass_data_descriptor() -> None:
    # A data descriptor on the metaclass wins over the class's dict.
    M = meta()
    E = make("E", {"A": 1})
    before = all(E.A is E.A for _ in range(10))
    M.A = property(lambda cls: "meta property")
    try:
        report([before, repr(E.A)])
    finally:
        del M.A


def case_setter_frees_the_member() -> None:
    # type's own setters (here __annotations__) keep their value in the class's dict and free
    # the old one before the class changes: a finalizer that runs then reads the name again.
    # 76cf54e: SIGSEGV on 3.12 (a freed object from the cache); a plain Enum reads 'dict'.
    D = make("D", {})
    seen: list[str] = []

    class Z:
        def __del__(self) -> None:
            seen.append(type(D.__annotations__).__name__)

    x = object.__new__(D)
    x.z = Z()
    D.__annotations__ = x
    read = all(D.__annotations__ is x for _ in range(3))
    del x
    D.__annotations__ = {}
    gc.collect()
    report([read, seen])


def case_long_name_replaced_under_a_finalizer() -> None:
    # A 120-character member name, replaced by type.__setattr__ while a finalizer reads it
    # (3.12 frees the old value before the class changes).  The member may outlive the
    # class's reference to it (the cache holds it), so the finalizer may run later; what it
    # reads, whenever it runs, is never a freed object.
    name = "A" * 120
    seen: list[str] = []
    E = make("E", {name: 1, "B": 2})

    class Z:
        def __del__(self) -> None:
            seen.append(repr(getattr(E, name))[:40])

    a = getattr(E, name)
    cached = all(getattr(E, name) is a for _ in range(10))
    a.z = Z()
    del E._member_map_[name]
    E._value2member_map_.pop(1, None)
    E._member_names_.remove(name)
    del a
    type.__setattr__(E, name, "replaced")
    others = [make("F", {"X": i}).X for i in range(8)]  # push the entry out of the cache
    gc.collect()
    report([cached, getattr(E, name), seen, len(others)])
