"""Issue 18, class 3: a Secret's key never reaches a public object.

The key a Secret owns is found here only through ``gc.get_referents`` of its association (the
test's oracle; the collector's view of objects is out of scope for the promise).  From the
objects a program holds (the Secret, its ``reveal()`` guard and that guard's view, the value
``isolated()`` yields, and everything reachable from them by attribute, public or private,
and through tuples), the key must never be reached; and where the attacker has it anyway
(through the collector), closing it, re-binding it or ending its association is refused.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable
from typing import Any

from pkeyguard import (
    KeyStateError,
    PkeyGuard,
    RegionError,
    RegionGuard,
    Secret,
    _core,
    isolated,
)
from tests.adversarial.childlib import MPROTECT, NA
from tests.support import perms_at

SKIP_TYPES = (type, type(len), type(gc), type(lambda: None), type("".join))


def secrets_key(secret: Secret) -> Any:
    """The oracle: the key, found through the collector's references."""
    found = [o for o in gc.get_referents(secret._assoc) if isinstance(o, _core.Key)]
    assert len(found) == 1, found
    return found[0]


def reachable(roots: Iterable[object], depth: int = 5) -> dict[int, str]:
    """Every object reachable from ``roots`` by getattr over dir() and by tuple/list items,
    with the path that reached it."""
    seen: dict[int, str] = {}
    frontier: list[tuple[object, str]] = [(r, f"root{i}") for i, r in enumerate(roots)]
    for _ in range(depth):
        nxt: list[tuple[object, str]] = []
        for obj, path in frontier:
            if id(obj) in seen or isinstance(obj, SKIP_TYPES) or obj is None:
                continue
            seen[id(obj)] = path
            if isinstance(obj, (tuple, list)):
                nxt.extend((item, f"{path}[{i}]") for i, item in enumerate(obj))
                continue
            if isinstance(obj, (int, str, bytes, float, bool)):
                continue
            for name in dir(obj):
                if name.startswith("__") and name != "__self__":
                    continue
                try:
                    value = getattr(obj, name)
                except Exception:  # refusals are what we want
                    continue
                if callable(value) and not isinstance(value, (_core.Key, _core.Guard)):
                    continue
                nxt.append((value, f"{path}.{name}"))
        frontier = nxt
    return seen


def assert_unreachable(key: Any, roots: Iterable[object], label: str) -> None:
    paths = reachable(roots)
    assert id(key) not in paths, f"{label}: the secret's key is reachable as {paths[id(key)]}"


def case_reveal_guard_and_view_hide_the_key() -> None:
    secret = Secret.from_bytes(bytearray(b"correct horse battery staple"))
    key = secrets_key(secret)
    guard: Any = secret.reveal()
    assert_unreachable(key, [secret, guard], "secret and its reveal guard")
    with guard as buf:
        assert buf.guard is guard
        assert_unreachable(key, [secret, guard, buf], "inside reveal()")
        for name in ("key", "region"):
            with contextlib.suppress(AttributeError):
                getattr(guard, name)
                raise AssertionError(f"reveal().{name} is exposed")
        assert guard._binding is None
        assert bytes(buf) == b"correct horse battery staple"
    # the private slots hold the association, whose key is not exposed either
    with contextlib.suppress(AttributeError):
        _ = secret._assoc._key
        raise AssertionError("the association's key is exposed")
    with contextlib.suppress(AttributeError):
        _ = secret._assoc.key
        raise AssertionError("the association's key is exposed")
    secret.close()


def case_isolated_does_not_hand_out_a_secrets_key() -> None:
    mine = PkeyGuard(NA)
    secret = Secret.from_bytes(bytearray(b"s3cret"))
    key = secrets_key(secret)
    with isolated() as keys:
        assert mine in keys
        assert key not in keys, "isolated() handed out a Secret's key"
        assert_unreachable(key, [keys], "isolated()'s value")
        guards = _core.thread_guards()  # private, but even there the key is not exposed
        assert_unreachable(key, [guards], "the thread's guards")
        with secret.reveal() as buf:  # a Secret can still be revealed inside
            assert bytes(buf) == b"s3cret"
    secret.close()
    mine.close()


def case_a_secrets_key_cannot_be_closed_or_rebound() -> None:
    secret = Secret.from_bytes(bytearray(b"hunter2"))
    key = secrets_key(secret)  # suppose an attacker got it anyway
    region = RegionGuard(64)
    for attack in (
        key.close,
        lambda: key.associate(region),
        lambda: secret._assoc.disassociate(),
        lambda: secret._region.association.disassociate(),  # type: ignore[union-attr]
    ):
        with contextlib.suppress(KeyStateError, RegionError):
            attack()
            raise AssertionError(f"{attack} was not refused")
    assert not key.closed
    if MPROTECT:
        assert perms_at(secret.address)[:3] == "---"  # still closed outside reveal()
    with secret.reveal() as buf:
        assert bytes(buf) == b"hunter2"
    secret.close()
    assert key.closed  # freed with the Secret
    region.close()
