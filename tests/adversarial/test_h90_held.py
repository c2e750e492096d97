"""Attacks on the issue-12 hot path that held (on 3.11.7, 3.12.1, 3.13.0): kept as
regression tests."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack

_SCENE = """
import copy, pickle, weakref, sys
region = RegionGuard(ctypes.c_uint32)
key = PkeyGuard()
assoc = key.associate(region)
region2 = RegionGuard(16)
key2 = PkeyGuard()
assoc2 = key2.associate(region2)
"""


def test_guard_freelist_identity_and_resurrection() -> None:
    body = (
        "snap = snapshot()\n"
        + _SCENE
        + """
g = assoc.set_access_rights(RW)
for f in (weakref.ref, copy.copy, copy.deepcopy, pickle.dumps, lambda x: type(x)(),
          lambda x: object.__new__(type(x))):
    raises(TypeError, f, g)
for bound in (g.__enter__, g.__exit__):
    for f in (copy.copy, copy.deepcopy, pickle.dumps, lambda x: type(x)(), weakref.ref):
        raises(TypeError, f, bound)
del bound
# bound methods outlive their guard's name; freelist churn in between
ent, ex = g.__enter__, g.__exit__
del g
gc.collect()
for i in range(300):
    x = assoc.set_access_rights((NA, RO, RW)[i % 3]); del x
g2 = ent()
assert g2.active and g2.rights is RW
g2.mut_ref_guard().value = 5
ex(None, None, None)
assert not g2.active
del g2, ent, ex
# views keep their guard; after churn a stale view still refuses
stale = []
for i in range(20):
    with assoc.set_access_rights(RW) as g:
        stale.append(g.mut_ref_guard())
    del g
for i in range(300):
    x = assoc.set_access_rights((NA, RO, RW)[i % 3]); del x
for v in stale:
    raises(ViewError, getattr, v, "value")
    raises(ViewError, setattr, v, "value", 1)
del stale, v
# dead guards are not reachable through the collector
gc.collect()
live = [o for o in gc.get_objects() if isinstance(o, _core.Guard)]
assert live == [], live
# the guard classes' refcounts are stable across recycling
before = sys.getrefcount(pkeyguard.WriteGuard)
for i in range(5000):
    x = assoc.set_access_rights(RW); del x
assert sys.getrefcount(pkeyguard.WriteGuard) == before
assoc.disassociate(); assoc2.disassociate()
key.close(); key2.close(); region.close(); region2.close()
del assoc, assoc2, key, key2, region, region2
assert_clean(snap)
"""
    )
    assert_survived(attack(body, timeout=90, watchdog=60))


def test_guard_freelist_under_threads_gc_finalizers_and_fork() -> None:
    body = (
        _SCENE
        + """
gc.set_threshold(1)
sys.setswitchinterval(1e-6)
errors = []
def churn(a, n, write):
    try:
        for i in range(n):
            with a.set_access_rights((RW, RO, NA)[i % 3]) as g:
                if i % 3 == 0:
                    v = g.mut_ref_guard()
                    write(v, i)
                    del v
    except BaseException as exc:
        errors.append(exc)
def w1(v, i): v.value = i
def w2(v, i): v[0] = i & 0xFF
keep = []
def fin(self):
    if len(keep) < 5:
        keep.append(self)
    made = [assoc.set_access_rights(RO) for _ in range(3)]
ts = [threading.Thread(target=churn, args=(a, 600, w)) for a, w in
      ((assoc, w1), (assoc2, w2), (assoc, w1), (assoc2, w2))]
for t in ts:
    t.start()
for i in range(100):
    if i % 2:
        pkeyguard.WriteGuard.__del__ = fin
    elif "__del__" in pkeyguard.WriteGuard.__dict__:
        del pkeyguard.WriteGuard.__del__
    time.sleep(0.001)
for t in ts:
    t.join()
if "__del__" in pkeyguard.WriteGuard.__dict__:
    del pkeyguard.WriteGuard.__del__
assert not errors, errors[:3]
keep.clear()
gc.set_threshold(700)
for i in range(20):
    x = assoc.set_access_rights(RW); del x
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
"""
    )
    assert_survived(attack(body, timeout=120, watchdog=90))


def test_rights_metaclass_keeps_enum_behaviour_and_refuses_fakes() -> None:
    body = (
        _SCENE
        + """
import enum
P = PkeyPermissions
assert isinstance(P.ReadWrite, P) and isinstance(P, enum.EnumType)
assert list(P) == [P.NoAccess, P.ReadOnly, P.ReadWrite]
assert P("ReadWrite") is P["ReadWrite"] is P.ReadWrite is getattr(P, "".join(["Read", "Write"]))
assert pickle.loads(pickle.dumps(P.ReadWrite)) is P.ReadWrite
assert copy.deepcopy(P.ReadOnly) is P.ReadOnly and copy.copy(P.NoAccess) is P.NoAccess
assert {P.ReadWrite: 1}[P.ReadWrite] == 1 and "ReadWrite" in dir(P)
raises(AttributeError, setattr, P, "ReadWrite", P.NoAccess)
raises(AttributeError, delattr, P, "ReadWrite")
raises(TypeError, type(P).__getattribute__, P, 1)
try:
    class Sub(P):
        pass
except TypeError:
    pass
else:
    raise AssertionError("PkeyPermissions subclassed")
assert hasattr(P, "nonexistent") is False
class S(str):
    def __eq__(self, other): return True
    def __hash__(self): return hash("ReadWrite")
assert getattr(P, S("ReadWrite")) is P.ReadWrite
class Fake(str):
    def __eq__(self, other): return True
    __hash__ = str.__hash__
class FakeEnum(enum.Enum):
    ReadWrite = "ReadWrite"
for fake in ("ReadWrite", Fake("ReadWrite"), FakeEnum.ReadWrite, 2, None, P):
    raises(pkeyguard.ArgumentTypeError, assoc.set_access_rights, fake)
assert assoc.set_access_rights(P.ReadWrite).rights is P.ReadWrite
"""
    )
    assert_survived(attack(body, timeout=60, watchdog=30))


def test_scalar_value_slots_convert_check_touch_by_every_spelling() -> None:
    body = (
        _SCENE
        + """
class Name(str):
    def __eq__(self, other): return True
    def __hash__(self): return hash("value")
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
    out = []
    t = threading.Thread(target=lambda: out.append(
        (raises(ViewError, getattr, v, "value"), raises(ViewError, setattr, v, "value", 1))))
    t.start(); t.join()
    assert len(out) == 1
m = assoc.set_access_rights(RW)
m.__enter__()
mv = m.mut_ref_guard()
class Exiting:
    def __index__(self):
        m.__exit__(None, None, None)
        return 7
raises(PkeyguardError, setattr, mv, "value", Exiting())
assert not m.active
raises(ViewError, getattr, v, "value")
with assoc.set_access_rights(RO) as g:
    r = g.ref_guard()
    raises(AccessError, setattr, r, "value", 1)
    with assoc.set_access_rights(NA):
        raises(AccessError, getattr, r, "value")
"""
    )
    assert_survived(attack(body, timeout=60, watchdog=30))
