"""Class 10: a refused close leaves the object open and can be retried; a dropped Secret
is always wiped; closing one Secret while another is revealed works.  Also the refusal
granularity paragraph: only a guard of the region's own association blocks
region.close()/disassociate()/protect(); entering a guard of an ended association raises
GuardStateError."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack

_WIPES = """
wipes = []


def hook(address, length):
    wipes.append((address, length, ctypes.string_at(address, length) == bytes(length)))


def wipes_of(address):
    # The hook sees the usable pages; secret.address is in them (or a guard page away).
    return [
        zeroed for start, length, zeroed in wipes
        if start - PAGE <= address < start + length + PAGE
    ]


alloc = allocator.Secure(lock=False, on_before_unmap=hook)


def make(data):
    s = Secret(len(data), allocator=alloc)
    s.write(0, data)
    return s


def assert_wiped_once(address, what):
    got = wipes_of(address)
    assert got == [True], f"{what}: wipes {got} (want exactly one, all zeros)"
    assert perms_at(address) == "", f"{what}: still mapped"
    # The kernel may hand this address to the next secret: forget the wipes seen so far.
    wipes.clear()
"""

_OTHER_REVEALED = """
snap = snapshot()
s1 = make(b"first secret")
s2 = make(b"second secret")
a1 = secret_address(s1)
with s2.reveal() as b2:
    s1.close()
    assert s1.closed, "close() returned but the secret is still open"
    assert_wiped_once(a1, "closed while another secret was revealed")
    assert bytes(b2) == b"second secret"
s2.close()
assert_clean(snap, "close while another is revealed")
"""


def test_close_a_secret_while_another_is_revealed() -> None:
    """Class 10: closing one Secret inside another Secret's reveal() block works at once:
    the first is wiped and unmapped, the revealed one is untouched (the old close is
    refused because all secrets share one key, and can never be retried)."""
    assert_survived(attack(_WIPES + _OTHER_REVEALED, timeout=60, watchdog=30))


_RETRY_SECRET = """
snap = snapshot()
s = make(b"refuse me once")
a = secret_address(s)
with s.reveal() as b:
    raises(PkeyguardError, s.close)
    assert not s.closed, "a refused close marked the secret closed"
    assert bytes(b) == b"refuse me once"
    assert wipes_of(a) == [], "a refused close wiped the secret"
with s.reveal() as b:
    assert bytes(b) == b"refuse me once"
s.close()
assert s.closed, "the retried close() did not close the secret"
assert_wiped_once(a, "closed on retry")
s.close()
assert_clean(snap, "refused secret close")
"""


def test_refused_secret_close_can_be_retried() -> None:
    """Class 10: Secret.close() inside its own reveal() is refused with a pkeyguard error,
    leaves the secret open and intact, and a later close() wipes and unmaps it (the old
    close spends its one-shot finalizer on the refusal: the retry does nothing and the
    secret is never wiped)."""
    assert_survived(attack(_WIPES + _RETRY_SECRET, timeout=60, watchdog=30))


_DROPPED = """
snap = snapshot()
# Dropped while another secret is revealed.
s1 = make(b"dropped during reveal")
a1 = secret_address(s1)
s2 = make(b"revealed")
with s2.reveal() as b2:
    del s1
    gc.collect()
    bytes(b2)
gc.collect()
assert_wiped_once(a1, "dropped while another secret was revealed")
# Dropped after a refused close.
s3 = make(b"refused then dropped")
a3 = secret_address(s3)
with s3.reveal():
    try:
        s3.close()
    except PkeyguardError:
        pass
del s3
gc.collect()
assert_wiped_once(a3, "dropped after a refused close")
# Dropped in a reference cycle.
s4 = make(b"in a cycle")
a4 = secret_address(s4)
cycle = [s4]
cycle.append(cycle)
del s4, cycle
gc.collect()
assert_wiped_once(a4, "dropped in a cycle")
s2.close()
assert_clean(snap, "dropped secrets")
"""


def test_dropped_secrets_are_always_wiped() -> None:
    """Class 10: a Secret dropped while another one is revealed, one dropped after a refused
    close, and one dropped in a reference cycle are each wiped exactly once and unmapped."""
    assert_survived(attack(_WIPES + _DROPPED, timeout=60, watchdog=30))


_RETRY_REGION_KEY = """
snap = snapshot()
key = PkeyGuard()
region = RegionGuard(ctypes.c_uint32)
assoc = key.associate(region)
with assoc.set_access_rights(RW) as g:
    g.mut_ref_guard().value = 77
    raises(RegionError, region.close)
    raises(RegionError, assoc.disassociate)
    raises(RegionError, region.protect, AccessPermissions.ReadOnly)
    raises(KeyStateError, key.close)
    assert not region.closed and not key.closed and assoc.associated
    assert g.mut_ref_guard().value == 77
with assoc.set_access_rights(RO) as g:
    assert g.ref_guard().value == 77
key.close()
assert key.closed and not region.closed
region.close()
assert_clean(snap, "refused region/key close")
"""


def test_refused_region_and_key_close_can_be_retried() -> None:
    """Class 10: region.close(), disassociate(), protect() and key.close() refused inside a
    guard change nothing (a property the old code already has), and work afterwards."""
    assert_survived(attack(_RETRY_REGION_KEY, timeout=60, watchdog=30))


_GRANULARITY = """
snap = snapshot()
key = PkeyGuard()
a_region, b_region, c_region = (RegionGuard(64) for _ in range(3))
a, b, c = (key.associate(r) for r in (a_region, b_region, c_region))
with a.set_access_rights(RW) as g:
    b_region.close()                               # another association: allowed
    c.disassociate()                               # another association: allowed
    c_region.protect(AccessPermissions.ReadOnly)   # not associated any more: allowed
    raises(RegionError, a_region.close)
    raises(RegionError, a.disassociate)
    raises(RegionError, a_region.protect, AccessPermissions.ReadOnly)
    raises(KeyStateError, key.close)
    g.mut_ref_guard()[0] = 1
a_region.close()
c_region.close()
key.close()
assert_clean(snap, "refusal granularity")
"""


def test_refusal_is_per_association() -> None:
    """Class 10 (granularity paragraph): while a guard of region A's association is active,
    region B of the same key can be closed and C disassociated and re-protected; only A's
    close/disassociate/protect (RegionError) and key.close() (KeyStateError) are refused
    (the old code refuses everything on the key)."""
    assert_survived(attack(_GRANULARITY, timeout=60, watchdog=30))


_ENDED = """
snap = snapshot()
for how in ("disassociate", "close region", "close key"):
    key = PkeyGuard()
    region = RegionGuard(64)
    assoc = key.associate(region)
    g = assoc.set_access_rights(RW)
    with g:
        pass
    if how == "disassociate":
        assoc.disassociate()
    elif how == "close region":
        region.close()
    else:
        key.close()
    raises(GuardStateError, g.__enter__)
    assert _core.thread_guards() == [], how
    if MPROTECT and not region.closed:
        assert perms_at(region.address) == "rw-p", (how, perms_at(region.address))
    region.close()
    key.close()
assert_clean(snap, "guards of ended associations")
"""


def test_guard_of_an_ended_association_cannot_be_entered() -> None:
    """Class 10 (granularity paragraph): a guard kept from an association that has ended
    (disassociated, region closed, key closed) raises GuardStateError on entry and changes
    no page rights (the old code enters it and re-protects the key's other regions)."""
    assert_survived(attack(_ENDED, timeout=60, watchdog=30))
