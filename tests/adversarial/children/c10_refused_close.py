"""Class 10: a refused close leaves the object open and can be retried; a dropped Secret is
always wiped (the child side of test_c10_refused_close.py)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Any

from pkeyguard import (
    AccessPermissions,
    GuardStateError,
    KeyStateError,
    PkeyGuard,
    PkeyguardError,
    RegionError,
    RegionGuard,
    Secret,
    _core,
    allocator,
)
from tests.adversarial.childlib import MPROTECT, PAGE, RO, RW, assert_clean, raises, snapshot
from tests.support import perms_at

wipes: list[tuple[int, int, bool]] = []


def hook(address: int, length: int) -> None:
    wipes.append((address, length, ctypes.string_at(address, length) == bytes(length)))


def wipes_of(address: int) -> list[bool]:
    # The hook sees the usable pages; secret.address is in them (or a guard page away).
    return [
        zeroed for start, length, zeroed in wipes if start - PAGE <= address < start + length + PAGE
    ]


alloc = allocator.Secure(lock=False, on_before_unmap=hook)


def make(data: bytes) -> Secret:
    s = Secret(len(data), allocator=alloc)
    s.write(0, data)
    return s


def assert_wiped_once(address: int, what: str) -> None:
    got = wipes_of(address)
    assert got == [True], f"{what}: wipes {got} (want exactly one, all zeros)"
    assert perms_at(address) == "", f"{what}: still mapped"
    # The kernel may hand this address to the next secret: forget the wipes seen so far.
    wipes.clear()


def case_close_a_secret_while_another_is_revealed() -> None:
    snap = snapshot()
    s1 = make(b"first secret")
    s2 = make(b"second secret")
    a1 = s1.address
    with s2.reveal() as b2:
        s1.close()
        assert s1.closed, "close() returned but the secret is still open"
        assert_wiped_once(a1, "closed while another secret was revealed")
        assert bytes(b2) == b"second secret"
    s2.close()
    assert_clean(snap, "close while another is revealed")


def case_refused_secret_close_can_be_retried() -> None:
    snap = snapshot()
    s = make(b"refuse me once")
    a = s.address
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


def case_dropped_secrets_are_always_wiped() -> None:
    snap = snapshot()
    # Dropped while another secret is revealed.
    s1 = make(b"dropped during reveal")
    a1 = s1.address
    s2 = make(b"revealed")
    with s2.reveal() as b2:
        del s1
        gc.collect()
        bytes(b2)
    gc.collect()
    assert_wiped_once(a1, "dropped while another secret was revealed")
    # Dropped after a refused close.
    s3 = make(b"refused then dropped")
    a3 = s3.address
    with s3.reveal(), contextlib.suppress(PkeyguardError):
        s3.close()
    del s3
    gc.collect()
    assert_wiped_once(a3, "dropped after a refused close")
    # Dropped in a reference cycle.
    s4 = make(b"in a cycle")
    a4 = s4.address
    cycle: list[object] = [s4]
    cycle.append(cycle)
    del s4, cycle
    gc.collect()
    assert_wiped_once(a4, "dropped in a cycle")
    s2.close()
    assert_clean(snap, "dropped secrets")


def case_refused_region_and_key_close_can_be_retried() -> None:
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


def case_refusal_is_per_association() -> None:
    snap = snapshot()
    key = PkeyGuard()
    a_region, b_region, c_region = (RegionGuard(64) for _ in range(3))
    a, _b, c = (key.associate(r) for r in (a_region, b_region, c_region))
    with a.set_access_rights(RW) as g:
        b_region.close()  # another association: allowed
        c.disassociate()  # another association: allowed
        c_region.protect(AccessPermissions.ReadOnly)  # not associated any more: allowed
        raises(RegionError, a_region.close)
        raises(RegionError, a.disassociate)
        raises(RegionError, a_region.protect, AccessPermissions.ReadOnly)
        raises(KeyStateError, key.close)
        g.mut_ref_guard()[0] = 1
    a_region.close()
    c_region.close()
    key.close()
    assert_clean(snap, "refusal granularity")


def case_guard_of_an_ended_association_cannot_be_entered() -> None:
    snap = snapshot()
    for how in ("disassociate", "close region", "close key"):
        key = PkeyGuard()
        region: RegionGuard[Any] = RegionGuard(64)
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
