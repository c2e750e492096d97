"""Class 6: identity.  Objects that own a key, memory or a guard activation cannot be
constructed around the library, copied or pickled; set_access_rights() hands out a new guard
on every call; a leftover memoryview spoils only its own activation's exit; a Secret does
not expose its library-owned key and region."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, attack

_SCENE = """
import copy, pickle

key = PkeyGuard()
region = RegionGuard(ctypes.c_uint32)
assoc = key.associate(region)
"""

_CONSTRUCT = {
    "AssociatedRegion": """
raises(TypeError, pkeyguard.AssociatedRegion, key, RegionGuard(8))
raises(TypeError, pkeyguard.AssociatedRegion, key, region)
""",
    "guards": """
g = assoc.set_access_rights(RW)
args = (getattr(g, "key", None), getattr(g, "level", 2), getattr(g, "owner", None))
for cls in (pkeyguard.WriteGuard, pkeyguard.ReadGuard, pkeyguard.NoAccessGuard,
            pkeyguard.AccessGuard):
    raises(TypeError, cls, *args)
""",
    "views": """
with assoc.set_access_rights(RW) as g:
    for cls in (pkeyguard.ScalarRef, pkeyguard.MutScalarRef):
        raises(TypeError, cls, g, region.address, 4, "I", cls is pkeyguard.MutScalarRef)
    for cls in (pkeyguard.BytesRef, pkeyguard.MutBytesRef, pkeyguard.CompositeRef,
                pkeyguard.MutCompositeRef):
        raises(TypeError, cls, g, region.address, 4, "s", cls.__name__.startswith("Mut"))
""",
}


@pytest.mark.parametrize("what", sorted(_CONSTRUCT))
def test_direct_construction_is_refused(what: str) -> None:
    """Class 6: AssociatedRegion(key, region), the guard classes and the view classes
    cannot be constructed directly from their public names (TypeError): such an object
    would bypass the checks association and views rely on."""
    body = _SCENE + _CONSTRUCT[what] + "\nassert _core.thread_guards() == []\n"
    assert_survived(attack(body, timeout=60, watchdog=30))


_COPY = """
secret = Secret.from_bytes(bytearray(b"hunter2"))
g = assoc.set_access_rights(RO)
objects = {"key": key, "region": region, "assoc": assoc, "guard": g, "secret": secret}
with assoc.set_access_rights(RW) as active:
    objects["active guard"] = active
    objects["view"] = active.mut_ref_guard()
    objects["read view"] = active.ref_guard()
    failures = []
    for name, obj in objects.items():
        attempts = [("copy.copy", copy.copy), ("copy.deepcopy", copy.deepcopy)]
        attempts += [(f"pickle protocol {p}", lambda o, p=p: pickle.dumps(o, protocol=p))
                     for p in range(pickle.HIGHEST_PROTOCOL + 1)]
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
"""


def test_copy_and_pickle_are_refused() -> None:
    """Class 6: copy.copy, copy.deepcopy and pickle (every protocol) of PkeyGuard,
    RegionGuard, AssociatedRegion, guards (idle and active), views and Secret raise
    TypeError (the old AssociatedRegion can be shallow-copied)."""
    assert_survived(attack(_SCENE + _COPY, timeout=60, watchdog=30))


_NEW_GUARDS = """
for rights in (NA, RO, RW):
    a, b = assoc.set_access_rights(rights), assoc.set_access_rights(rights)
    assert a is not b, f"set_access_rights({rights.name}) returned the same guard twice"
g1 = assoc.set_access_rights(RW)
g2 = assoc.set_access_rights(RW)
with g1:
    with g2:
        g2.mut_ref_guard().value = 1
with assoc.set_access_rights(RW) as w:
    with assoc.set_access_rights(RO) as r:
        assert r.ref_guard().value == 1
    w.mut_ref_guard().value = 2
# Two threads taking guards at the same moment never share one.
sys.setswitchinterval(1e-6)
errors = []
barrier = threading.Barrier(2)


def reader():
    barrier.wait()
    for _ in range(300):
        g = assoc.set_access_rights(RO)
        try:
            with g:
                g.ref_guard().value
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
"""


def test_set_access_rights_returns_a_new_guard_per_call() -> None:
    """Class 6: every set_access_rights() call returns a new guard, so two callers never
    share one: two guards taken before either is entered nest, and two threads taking
    ReadOnly guards at the same moment never get "already active" (the old code caches one
    guard per rights value)."""
    assert_survived(attack(_SCENE + _NEW_GUARDS, timeout=60, watchdog=30))


_LEFTOVER = """
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
"""


def test_leftover_memoryview_spoils_only_its_own_activation() -> None:
    """Class 6: a memoryview left over from one activation makes that exit raise ViewError;
    later activations of the same guard (while it is still alive, and after it is
    released) exit cleanly (the old core counts exports per guard, forever)."""
    assert_survived(attack(_SCENE + _LEFTOVER, timeout=60, watchdog=30))


_SECRET = """
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
"""


def test_secret_hides_its_key_and_region() -> None:
    """Class 6: secret.key and secret.region are gone (AttributeError): the shared library
    key and the region must not be closed or associated by callers; secret.address gives
    the address for diagnostics."""
    assert_survived(attack(_SCENE + _SECRET, timeout=60, watchdog=30))


_LIAR = """
class Liar:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return hash(RW)


for rights in (RW, RO, NA):
    with assoc.set_access_rights(rights):
        pass
for bogus in (Liar(), "ReadWrite", 2, None):
    raises((PkeyguardError, TypeError, ValueError), assoc.set_access_rights, bogus)
assert _core.thread_guards() == []
"""


def test_rights_that_only_compare_equal_are_refused() -> None:
    """Class 6: set_access_rights() with an object that merely compares equal to (and
    hashes like) PkeyPermissions.ReadWrite is refused; the old code's guard cache hands it
    a cached WriteGuard."""
    assert_survived(attack(_SCENE + _LIAR, timeout=60, watchdog=30))
