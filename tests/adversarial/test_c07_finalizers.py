"""Class 7: finalizers release memory and keys exactly once, whatever the order in which
objects die: region and key dropped together (both orders, in cycles), resurrection by
``__del__``, gc at any point (threshold 1), interpreter exit with a daemon thread working
inside a guard, secrets still open at exit.  The public classes are final."""

from __future__ import annotations

import re

import pytest

from tests.adversarial.support import HYPOTHESIS, assert_survived, attack

_DROP = """
snap = snapshot()
unraisable = []
sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
for i in range(PARAMS["rounds"]):
    if PARAMS["order"] == "key-first":
        key = PkeyGuard()
        region = RegionGuard(64)
    else:
        region = RegionGuard(64)
        key = PkeyGuard()
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = i % 256
    if PARAMS["shape"] == "cycle":
        holder = [key, region, assoc, g]
        holder.append(holder)
        del holder
    del key, region, assoc, g
    if i % 3 == 0:
        gc.collect()
assert_clean(snap, f"{PARAMS}")
assert not unraisable, unraisable[:3]
"""


@pytest.mark.parametrize("shape", ["plain", "cycle"])
@pytest.mark.parametrize("order", ["key-first", "region-first"])
def test_region_and_key_dropped_together(order: str, shape: str) -> None:
    """Class 7: a key and its region dropped together (created in either order, alone or
    in a reference cycle with the association and guard) are both released once: keys back
    to the start, no mapping left, no error in a finalizer (the old key finalizer
    re-protects pages the region finalizer already unmapped: ENOMEM, and the key leaks)."""
    child = attack(_DROP, params={"order": order, "shape": shape, "rounds": 30})
    assert_survived(child, quiet=True)


_RESURRECT_PRELUDE = """
snap = snapshot()
unraisable = []
sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
saved = []


class Holder:
    def __init__(self, *objs):
        self.objs = objs
        self.me = self

    def __del__(self):
        saved.append(self.objs)


def check_region(r):
    # Open and mapped (and usable), or closed; never open over unmapped pages.
    if r.closed:
        k = PkeyGuard()
        raises(PkeyguardError, k.associate, r)
        k.close()
        return
    assert perms_at(r.address) != "", "a resurrected region reports open but is unmapped"
    assoc = r.association
    if assoc is None or not assoc.associated:
        k = PkeyGuard()
        assoc = k.associate(r)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 0x42
        assert g.ref_guard()[0] == 0x42


def check_newcomer_survives(r):
    # A new region (which may get the dead one's address) survives r.close().
    newcomer = RegionGuard(64)
    k = PkeyGuard()
    a = k.associate(newcomer)
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 7
    r.close()
    with a.set_access_rights(RW) as g:
        assert g.mut_ref_guard()[0] == 7
    newcomer.close()
    k.close()
"""

_RESURRECT = {
    "region": """
r = RegionGuard(64)
Holder(r)
del r
gc.collect()
(r,) = saved.pop()
check_region(r)
check_newcomer_survives(r)
""",
    "key-region-assoc": """
r = RegionGuard(64)
k = PkeyGuard()
a = k.associate(r)
Holder(r, k, a)
del r, k, a
gc.collect()
r, k, a = saved.pop()
if k.closed:
    raises(PkeyguardError, a.set_access_rights, RW)
check_region(r)
check_newcomer_survives(r)
k.close()
""",
    "secure-region": """
r = RegionGuard(64, allocator=allocator.Secure(lock=False))
Holder(r)
del r
gc.collect()
(r,) = saved.pop()
check_region(r)
check_newcomer_survives(r)
""",
    "secret": """
s = Secret.from_bytes(bytearray(b"resurrect me"))
Holder(s)
del s
gc.collect()
(s,) = saved.pop()
if s.closed:
    raises(PkeyguardError, lambda: s.reveal().__enter__())
else:
    with s.reveal() as b:
        assert bytes(b) == b"resurrect me"
s.close()
""",
}

_RESURRECT_END = """
saved.clear()
assert_clean(snap, "resurrection")
assert not unraisable, unraisable[:3]
"""


@pytest.mark.parametrize("what", sorted(_RESURRECT))
def test_resurrection_by_del(what: str) -> None:
    """Class 7: an object whose __del__ resurrects a region (plain or Secure), a
    key+region+association, or a Secret: the resurrected objects are either still mapped
    and usable or closed (never open over unmapped pages); closing them later never unmaps
    or touches somebody else's pages; everything is released exactly once (the old region
    finalizer unmaps before __del__ runs and leaves the region looking open)."""
    child = attack(_RESURRECT_PRELUDE + _RESURRECT[what] + _RESURRECT_END)
    assert_survived(child, quiet=True)


_DAEMON = """
import atexit

atexit.register(time.sleep, 0.3)  # runs after the library's exit hooks: the daemon goes on
if PARAMS["kind"] == "scalar":
    region = RegionGuard(ctypes.c_uint64)
else:
    region = RegionGuard(4096 * 3)
key = PkeyGuard()
assoc = key.associate(region)
if PARAMS["kind"] == "bytes-cycle":
    cycle = [region, key, assoc]
    cycle.append(cycle)
    del cycle
started = threading.Event()


def worker():
    with assoc.set_access_rights(RW) as g:
        v = g.mut_ref_guard()
        started.set()
        n = 0
        while True:
            n += 1
            if PARAMS["kind"] == "scalar":
                v.value = n
            else:
                v[n % len(v)] = n % 256
                bytes(v)


threading.Thread(target=worker, daemon=True).start()
assert started.wait(10)
time.sleep(0.05)
"""


@pytest.mark.parametrize("kind", ["scalar", "bytes-cycle"])
def test_exit_while_daemon_works_inside_guard(kind: str) -> None:
    """Class 7: the interpreter exits while a daemon thread writes the region in a loop
    inside a guard (an atexit hook that sleeps lets it run after the library's own exit
    hooks): the region is not unmapped under it and the process exits 0 (the old exit
    finalizer unmaps it: SIGSEGV)."""
    assert_survived(attack(_DAEMON, params={"kind": kind}, timeout=60, watchdog=30))


_SECRETS_AT_EXIT = """
import atexit, hashlib

atexit.register(time.sleep, 0.3)  # runs after the library's exit hooks: a daemon goes on


def hook(address, length):
    os.write(1, b"WIPED %d\\n" % (ctypes.string_at(address, length) == bytes(length)))


alloc = allocator.Secure(lock=False, on_before_unmap=hook)
s1 = Secret(32, allocator=alloc)
s1.write(0, b"a" * 32)
s2 = Secret(16, allocator=alloc)
s2.write(0, b"b" * 16)
cycle = [s2]
cycle.append(cycle)
del s2, cycle
if PARAMS["daemon"]:
    busy = Secret.from_bytes(bytearray(b"revealed by a daemon"))
    started = threading.Event()

    def revealer():
        while True:
            with busy.reveal() as b:
                hashlib.sha256(b).digest()
                started.set()
                time.sleep(0.02)  # inside the block, without the GIL, most of the time
                hashlib.sha256(b).digest()

    threading.Thread(target=revealer, daemon=True).start()
    assert started.wait(10)
print("SECRETS 2", flush=True)
"""


@pytest.mark.parametrize("daemon", [False, True], ids=["alone", "daemon-revealing-another"])
def test_secrets_open_at_exit_are_wiped(daemon: bool) -> None:
    """Class 7: secrets still open at interpreter exit (one referenced, one only in a
    reference cycle) are zeroed before unmapping, also while a daemon thread keeps
    revealing another secret (the old exit close is refused while any secret is revealed:
    the two secrets stay unwiped)."""
    child = attack(_SECRETS_AT_EXIT, params={"daemon": daemon}, timeout=60, watchdog=30)
    assert_survived(child)
    # The one in a cycle may be collected (and wiped) before exit, by any GC run: count every
    # wipe; each secret must be wiped exactly once, zeroed.
    wiped = re.findall(r"WIPED (\d)", child.stdout)
    assert wiped.count("1") == 2 and "0" not in wiped, f"wipes: {wiped}\n{child}"


_QUIET_EXIT = """
if PARAMS["order"] == "key-first":
    key = PkeyGuard()
    region = RegionGuard(ctypes.c_uint32)
else:
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard()
assoc = key.associate(region)
with assoc.set_access_rights(RW) as g:
    g.mut_ref_guard().value = 9
if PARAMS["secret"]:
    secret = Secret.from_bytes(bytearray(b"left open"))
"""


@pytest.mark.parametrize("secret", [False, True], ids=["no-secret", "secret"])
@pytest.mark.parametrize("order", ["key-first", "region-first"])
def test_exit_with_open_key_and_region_is_clean(order: str, secret: bool) -> None:
    """Class 7: a key and an associated region (and a Secret) still open at interpreter
    exit are released by the exit hooks without an error (the old hooks release the region
    before the key whenever the key is older, and the key's untagging fails)."""
    child = attack(_QUIET_EXIT, params={"order": order, "secret": secret}, watchdog=30)
    assert_survived(child, quiet=True)


_HUNT = """

unraisable = []
sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
saved = []


class Holder:
    def __init__(self, objs, resurrect):
        self.objs = objs
        self.resurrect = resurrect
        self.me = self

    def __del__(self):
        if self.resurrect:
            saved.append(self.objs)


def make(kind, key_first):
    if kind == "secret":
        return (Secret.from_bytes(bytearray(b"gc pressure")),)
    alloc = allocator.Secure(lock=False) if kind == "secure-region" else None
    if key_first and kind == "key+region":
        k = PkeyGuard()
    r = RegionGuard(ctypes.c_uint32, allocator=alloc)
    if kind != "key+region":
        return (r,)
    if not key_first:
        k = PkeyGuard()
    a = k.associate(r)
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 1
    return (r, k, a, g)


def settle(obj):
    if isinstance(obj, RegionGuard):
        if not obj.closed:
            assert perms_at(obj.address) != "", "a resurrected region is open but unmapped"
        obj.close()
    elif isinstance(obj, PkeyGuard):
        obj.close()
    elif isinstance(obj, Secret):
        if not obj.closed:
            with obj.reveal() as b:
                assert bytes(b) == b"gc pressure"
        obj.close()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["region", "secure-region", "key+region", "secret"]),
                          st.sampled_from(["drop", "cycle", "holder", "resurrect"]),
                          st.booleans()), min_size=1, max_size=6),
       st.booleans())
def hunt(plan, collect_each):
    print("plan", plan, collect_each, flush=True)
    snap = snapshot()
    gc.set_threshold(1)
    try:
        for kind, fate, key_first in plan:
            objs = make(kind, key_first)
            if fate == "cycle":
                cyc = list(objs)
                cyc.append(cyc)
                del cyc
            elif fate in ("holder", "resurrect"):
                Holder(objs, fate == "resurrect")
            del objs
            if collect_each:
                gc.collect()
        gc.collect()
        while saved:
            for obj in saved.pop():
                settle(obj)
            gc.collect()
    finally:
        gc.set_threshold(700, 10, 10)
    assert_clean(snap, f"plan {plan}")
    assert not unraisable, unraisable[:3]


hunt()
"""


def test_hunt_gc_pressure_and_finalizer_order() -> None:
    """Class 7 (hypothesis, in the child): with gc.set_threshold(1), random sequences of
    regions, Secure regions, key+region pairs (both creation orders) and secrets, dropped
    plainly, in reference cycles, behind objects with __del__, or resurrected by __del__;
    resurrected objects are usable or closed, and afterwards nothing leaks and no finalizer
    fails."""
    child = attack(HYPOTHESIS + _HUNT, params={"examples": 60}, timeout=150, watchdog=120)
    assert_survived(child)


_FINAL = """
def subclass(base):
    class Sub(base):
        pass
    return Sub


targets = {
    "RegionGuard": pkeyguard.RegionGuard,
    "RegionGuard[bytes]": pkeyguard.RegionGuard[bytes],
    "PkeyGuard": pkeyguard.PkeyGuard,
    "AssociatedRegion": pkeyguard.AssociatedRegion,
    "AccessGuard": pkeyguard.AccessGuard,
    "NoAccessGuard": pkeyguard.NoAccessGuard,
    "ReadGuard": pkeyguard.ReadGuard,
    "WriteGuard": pkeyguard.WriteGuard,
    "ScalarRef": pkeyguard.ScalarRef,
    "MutScalarRef": pkeyguard.MutScalarRef,
    "BytesRef": pkeyguard.BytesRef,
    "MutBytesRef": pkeyguard.MutBytesRef,
    "CompositeRef": pkeyguard.CompositeRef,
    "MutCompositeRef": pkeyguard.MutCompositeRef,
    "Secret": pkeyguard.Secret,
}
if PARAMS["allocators"]:
    targets = {
        "Allocator": allocator.Allocator,
        "Mmap": allocator.Mmap,
        "Secure": allocator.Secure,
    }
accepted = []
for name, cls in targets.items():
    try:
        subclass(cls)
    except TypeError:
        pass
    else:
        accepted.append(name)
assert not accepted, f"subclassing accepted for: {accepted}"
"""


def test_public_classes_are_final() -> None:
    """Class 7: RegionGuard, PkeyGuard, AssociatedRegion, the guard and view classes and
    Secret cannot be subclassed outside pkeyguard (TypeError)."""
    assert_survived(attack(_FINAL, params={"allocators": False}, timeout=60, watchdog=30))


def test_allocator_classes_are_final() -> None:
    """Class 7 (allocators paragraph): allocator.Allocator, Mmap and Secure cannot be
    subclassed outside pkeyguard (TypeError): region memory comes only from the library's
    own allocators."""
    assert_survived(attack(_FINAL, params={"allocators": True}, timeout=60, watchdog=30))
