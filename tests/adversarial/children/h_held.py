"""Attacks on the issue-12 hot path that held (on 3.11.7, 3.12.1, 3.13.0): the child
programs of ``test_h90_held.py``, kept as regression tests."""

from __future__ import annotations

import copy
import ctypes
import enum
import gc
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pkeyguard
from pkeyguard import (
    AccessError,
    PkeyGuard,
    PkeyguardError,
    PkeyPermissions,
    RegionGuard,
    ViewError,
    _core,
)
from tests.adversarial.childlib import NA, RO, RW, assert_clean, raises, snapshot


@dataclass
class Scene:
    region: Any
    key: PkeyGuard
    assoc: Any
    region2: Any
    key2: PkeyGuard
    assoc2: Any


def scene() -> Scene:
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard()
    assoc = key.associate(region)
    region2 = RegionGuard(16)
    key2 = PkeyGuard()
    assoc2 = key2.associate(region2)
    return Scene(region, key, assoc, region2, key2, assoc2)


def case_guard_freelist_identity_and_resurrection() -> None:
    snap = snapshot()
    s = scene()
    assoc = s.assoc
    g: Any = assoc.set_access_rights(RW)
    copiers: list[Callable[[Any], object]] = [
        weakref.ref,
        copy.copy,
        copy.deepcopy,
        pickle.dumps,
        lambda x: type(x)(),
        lambda x: object.__new__(type(x)),
    ]
    for f in copiers:
        raises(TypeError, f, g)
    bound_copiers: list[Callable[[Any], object]] = [
        copy.copy,
        copy.deepcopy,
        pickle.dumps,
        lambda x: type(x)(),
        weakref.ref,
    ]
    for bound in (g.__enter__, g.__exit__):
        for f in bound_copiers:
            raises(TypeError, f, bound)
    del bound
    # bound methods outlive their guard's name; freelist churn in between
    ent, ex = g.__enter__, g.__exit__
    del g
    gc.collect()
    for i in range(300):
        x = assoc.set_access_rights((NA, RO, RW)[i % 3])
        del x
    g2 = ent()
    assert g2.active and g2.rights is RW
    g2.mut_ref_guard().value = 5
    ex(None, None, None)
    assert not g2.active
    del g2, ent, ex
    # views keep their guard; after churn a stale view still refuses
    stale = []
    for _ in range(20):
        with assoc.set_access_rights(RW) as w:
            stale.append(w.mut_ref_guard())
        del w
    for i in range(300):
        x = assoc.set_access_rights((NA, RO, RW)[i % 3])
        del x
    for v in stale:
        raises(ViewError, getattr, v, "value")
        raises(ViewError, setattr, v, "value", 1)
    del stale, v  # pyright: ignore[reportPossiblyUnboundVariable]
    # dead guards are not reachable through the collector
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, _core.Guard)]
    assert live == [], live
    # the guard classes' refcounts are stable across recycling
    before = sys.getrefcount(pkeyguard.WriteGuard)
    for _ in range(5000):
        x = assoc.set_access_rights(RW)
        del x
    assert sys.getrefcount(pkeyguard.WriteGuard) == before
    s.assoc.disassociate()
    s.assoc2.disassociate()
    s.key.close()
    s.key2.close()
    s.region.close()
    s.region2.close()
    del assoc, s
    assert_clean(snap)


def case_guard_freelist_under_threads_gc_finalizers_and_fork() -> None:
    s = scene()
    assoc, assoc2 = s.assoc, s.assoc2
    gc.set_threshold(1)
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []

    def churn(a: Any, n: int, write: Callable[[Any, int], None]) -> None:
        try:
            for i in range(n):
                with a.set_access_rights((RW, RO, NA)[i % 3]) as g:
                    if i % 3 == 0:
                        v = g.mut_ref_guard()
                        write(v, i)
                        del v
        except BaseException as exc:
            errors.append(exc)

    def w1(v: Any, i: int) -> None:
        v.value = i

    def w2(v: Any, i: int) -> None:
        v[0] = i & 0xFF

    keep: list[object] = []

    def fin(self: object) -> None:
        if len(keep) < 5:
            keep.append(self)
        made = [assoc.set_access_rights(RO) for _ in range(3)]
        del made

    ts = [
        threading.Thread(target=churn, args=(a, 600, w))
        for a, w in ((assoc, w1), (assoc2, w2), (assoc, w1), (assoc2, w2))
    ]
    for t in ts:
        t.start()
    for i in range(100):
        if i % 2:
            setattr(pkeyguard.WriteGuard, "__del__", fin)  # noqa: B010
        elif "__del__" in pkeyguard.WriteGuard.__dict__:
            delattr(pkeyguard.WriteGuard, "__del__")
        time.sleep(0.001)
    for t in ts:
        t.join()
    if "__del__" in pkeyguard.WriteGuard.__dict__:
        delattr(pkeyguard.WriteGuard, "__del__")
    assert not errors, errors[:3]
    keep.clear()
    gc.set_threshold(700)
    for _ in range(20):
        x = assoc.set_access_rights(RW)
        del x
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(50):
                with assoc.set_access_rights(RW) as g:
                    g.mut_ref_guard().value = i
            os._exit(0)
        except BaseException:
            os._exit(3)
    assert os.waitpid(pid, 0)[1] == 0
    assert _core.thread_guards() == []


def case_rights_metaclass_keeps_enum_behaviour_and_refuses_fakes() -> None:
    assoc = scene().assoc
    p: Any = PkeyPermissions
    assert isinstance(p.ReadWrite, p) and isinstance(cast(object, p), enum.EnumType)
    assert list(p) == [p.NoAccess, p.ReadOnly, p.ReadWrite]
    assert p("ReadWrite") is p["ReadWrite"] is p.ReadWrite is getattr(p, "".join(["Read", "Write"]))
    assert pickle.loads(pickle.dumps(p.ReadWrite)) is p.ReadWrite
    assert copy.deepcopy(p.ReadOnly) is p.ReadOnly and copy.copy(p.NoAccess) is p.NoAccess
    assert {p.ReadWrite: 1}[p.ReadWrite] == 1 and "ReadWrite" in dir(p)
    raises(AttributeError, setattr, p, "ReadWrite", p.NoAccess)
    raises(AttributeError, delattr, p, "ReadWrite")
    raises(TypeError, type(p).__getattribute__, p, 1)
    try:

        class Sub(p):  # type: ignore[misc]
            pass

    except TypeError:
        pass
    else:
        raise AssertionError("PkeyPermissions subclassed")
    assert hasattr(p, "nonexistent") is False

    class S(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("ReadWrite")

    assert getattr(p, S("ReadWrite")) is p.ReadWrite

    class Fake(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    class FakeEnum(enum.Enum):
        ReadWrite = "ReadWrite"

    for fake in ("ReadWrite", Fake("ReadWrite"), FakeEnum.ReadWrite, 2, None, p):
        raises(pkeyguard.ArgumentTypeError, assoc.set_access_rights, fake)
    assert assoc.set_access_rights(p.ReadWrite).rights is p.ReadWrite


def case_scalar_value_slots_convert_check_touch_by_every_spelling() -> None:
    assoc = scene().assoc

    class Name(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("value")

    built = "".join(["val", "ue"])
    with assoc.set_access_rights(RW) as g:
        v = g.mut_ref_guard()
        for name in ("value", built, Name("value")):
            setattr(v, name, 9)
            assert getattr(v, name) == 9
        raises(TypeError, v.__setattr__, 1, 2)
        raises(TypeError, v.__getattribute__, 1)
        raises(AttributeError, delattr, v, "value")
        raises(AttributeError, setattr, v, "other", 1)
        raises(AttributeError, getattr, v, "__dict__")
        assert object.__getattribute__(v, "value") == 9
        out: list[object] = []
        t = threading.Thread(
            target=lambda: out.append(
                (raises(ViewError, getattr, v, "value"), raises(ViewError, setattr, v, "value", 1))
            )
        )
        t.start()
        t.join()
        assert len(out) == 1
    m = assoc.set_access_rights(RW)
    m.__enter__()
    mv = m.mut_ref_guard()

    class Exiting:
        def __index__(self) -> int:
            m.__exit__(None, None, None)
            return 7

    raises(PkeyguardError, setattr, mv, "value", Exiting())
    assert not m.active
    raises(ViewError, getattr, v, "value")
    with assoc.set_access_rights(RO) as r:
        rv = r.ref_guard()
        raises(AccessError, setattr, rv, "value", 1)
        with assoc.set_access_rights(NA):
            raises(AccessError, getattr, rv, "value")
