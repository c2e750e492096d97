"""Class 6: identity (the child side of test_c06_identity.py)."""

from __future__ import annotations

import copy
import ctypes
import functools
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

import pkeyguard
from pkeyguard import (
    GuardStateError,
    PkeyGuard,
    PkeyguardError,
    RegionGuard,
    Secret,
    ViewError,
    _core,
)
from pkeyguard.pkey import AssociatedRegion
from tests.adversarial.childlib import NA, RO, RW, params, raises
from tests.support import perms_at


class Scene:
    def __init__(self) -> None:
        self.key = PkeyGuard()
        self.region: RegionGuard[Any] = RegionGuard(ctypes.c_uint32)
        self.assoc: AssociatedRegion[Any] = self.key.associate(self.region)


def _construct_associated_region(s: Scene) -> None:
    raises(TypeError, pkeyguard.AssociatedRegion, s.key, RegionGuard(8))
    raises(TypeError, pkeyguard.AssociatedRegion, s.key, s.region)


def _construct_guards(s: Scene) -> None:
    g = s.assoc.set_access_rights(RW)
    args = (g.key, g.level, None)
    for cls in (
        pkeyguard.WriteGuard,
        pkeyguard.ReadGuard,
        pkeyguard.NoAccessGuard,
        pkeyguard.AccessGuard,
    ):
        raises(TypeError, cls, *args)


def _construct_views(s: Scene) -> None:
    with s.assoc.set_access_rights(RW) as g:
        for cls in (pkeyguard.ScalarRef, pkeyguard.MutScalarRef):
            raises(TypeError, cls, g, s.region.address, 4, "I", cls is pkeyguard.MutScalarRef)
        for other in (
            pkeyguard.BytesRef,
            pkeyguard.MutBytesRef,
            pkeyguard.CompositeRef,
            pkeyguard.MutCompositeRef,
        ):
            writable = other.__name__.startswith("Mut")
            raises(TypeError, other, g, s.region.address, 4, "s", writable)


CONSTRUCT: dict[str, Callable[[Scene], None]] = {
    "AssociatedRegion": _construct_associated_region,
    "guards": _construct_guards,
    "views": _construct_views,
}


def case_direct_construction_is_refused() -> None:
    CONSTRUCT[params()["what"]](Scene())
    assert _core.thread_guards() == []


def case_copy_and_pickle_are_refused() -> None:
    s = Scene()
    secret = Secret.from_bytes(bytearray(b"hunter2"))
    g = s.assoc.set_access_rights(RO)
    objects: dict[str, object] = {
        "key": s.key,
        "region": s.region,
        "assoc": s.assoc,
        "guard": g,
        "secret": secret,
    }
    with s.assoc.set_access_rights(RW) as active:
        objects["active guard"] = active
        objects["view"] = active.mut_ref_guard()
        objects["read view"] = active.ref_guard()
        failures: list[str] = []
        for name, obj in objects.items():
            attempts: list[tuple[str, Callable[[object], object]]] = [
                ("copy.copy", copy.copy),
                ("copy.deepcopy", copy.deepcopy),
            ]
            attempts += [
                (f"pickle protocol {p}", functools.partial(pickle.dumps, protocol=p))
                for p in range(pickle.HIGHEST_PROTOCOL + 1)
            ]
            for how, fn in attempts:
                try:
                    fn(obj)
                except TypeError:
                    pass
                except BaseException as exc:
                    failures.append(f"{how}({name}) raised {type(exc).__name__}: {exc}")
                else:
                    failures.append(f"{how}({name}) worked")
        assert not failures, failures
    secret.close()


def case_set_access_rights_returns_a_new_guard_per_call() -> None:
    assoc = Scene().assoc
    for rights in (NA, RO, RW):
        a, b = assoc.set_access_rights(rights), assoc.set_access_rights(rights)
        assert a is not b, f"set_access_rights({rights.name}) returned the same guard twice"
    g1 = assoc.set_access_rights(RW)
    g2 = assoc.set_access_rights(RW)
    with g1, g2:
        g2.mut_ref_guard().value = 1
    with assoc.set_access_rights(RW) as w:
        with assoc.set_access_rights(RO) as r:
            assert r.ref_guard().value == 1
        w.mut_ref_guard().value = 2
    # Two threads taking guards at the same moment never share one.
    sys.setswitchinterval(1e-6)
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def reader() -> None:
        barrier.wait()
        for _ in range(300):
            g = assoc.set_access_rights(RO)
            try:
                with g:
                    g.ref_guard().value  # noqa: B018 (the read is the point)
            except BaseException as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    ts = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    # Reuse after exit works (never twice at once).
    g = assoc.set_access_rights(RO)
    with g:
        raises(GuardStateError, g.__enter__)
    with g:
        pass
    assert _core.thread_guards() == []


def case_leftover_memoryview_spoils_only_its_own_activation() -> None:
    assoc = Scene().assoc
    g = assoc.set_access_rights(RW)
    g.__enter__()
    m = memoryview(g.mut_ref_guard())
    raises(ViewError, g.__exit__, None, None, None)
    assert not g.active and _core.thread_guards() == []
    for round_ in range(3):
        g.__enter__()
        g.mut_ref_guard().value = round_
        exc = None
        try:
            g.__exit__(None, None, None)
        except BaseException as e:
            exc = e
        assert exc is None, f"activation {round_ + 2} exit raised {type(exc).__name__}: {exc}"
    with g:
        assert g.ref_guard().value == 2
    m.release()
    with g:
        pass
    assert _core.thread_guards() == []


def case_secret_hides_its_key_and_region() -> None:
    Scene()
    secret = Secret.from_bytes(bytearray(b"correct horse"))
    for name in ("key", "region"):
        assert not hasattr(secret, name), f"secret.{name} is still exposed"
        raises(AttributeError, getattr, secret, name)
    address = secret.address
    assert isinstance(address, int) and address > 0, address
    assert perms_at(address) != "", "secret.address is not mapped"
    with secret.reveal() as buf:
        assert bytes(buf) == b"correct horse"
    secret.close()


class Liar:
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(RW)


def case_rights_that_only_compare_equal_are_refused() -> None:
    assoc = Scene().assoc
    for rights in (RW, RO, NA):
        with assoc.set_access_rights(rights):
            pass
    for bogus in (Liar(), "ReadWrite", 2, None):
        raises((PkeyguardError, TypeError, ValueError), assoc.set_access_rights, bogus)
    assert _core.thread_guards() == []
