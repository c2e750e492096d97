"""Child programs of ``tests/hw/test_keys_and_process.py``: fresh processes on pku, where
nothing else holds a key, so the pool's numbers can be counted whole.  Each case prints its
findings; the parent compares the lines."""

from __future__ import annotations

import contextlib
import ctypes
import errno

import pkeyguard
from pkeyguard import KeyExhaustedError, PkeyGuard, RegionGuard, _core
from tests.adversarial.childlib import NA, RO, RW
from tests.childhelpers import say


def stats() -> dict[str, int]:
    return dict(_core._pool_stats(_core.MODE_PKU))


def case_exhaustion() -> None:
    # Keys are virtual: 40 coexist, each usable, though x86 has 15 hardware keys.
    keys = [PkeyGuard() for _ in range(40)]
    regions = [RegionGuard(ctypes.c_uint32) for _ in keys]
    assocs = [k.associate(r) for k, r in zip(keys, regions, strict=True)]
    for i, a in enumerate(assocs):
        with a.set_access_rights(RW) as g:
            g.mut_ref_guard().value = i
    for i, a in enumerate(assocs):
        with a.set_access_rights(RO) as r:
            assert r.ref_guard().value == i
    say("COEXIST", stats()["logical"], stats()["held"])
    # KeyExhaustedError only when every number is under an opening guard: 15 open at once.
    with contextlib.ExitStack() as stack:
        for a in assocs[:15]:
            stack.enter_context(a.set_access_rights(RO))
        before, pkru = stats(), _core.rdpkru()
        try:
            assocs[15].set_access_rights(RO).__enter__()
            say("NOT REFUSED")
        except KeyExhaustedError as exc:
            text = str(exc)
            why = "a ReadOnly or ReadWrite guard on them is active" in text
            why = why and "Leave a guard" in text
            say("REFUSED", exc.errno == errno.ENOSPC, why)
        after = stats()
        names = ("held", "owned", "parked", "misses", "evictions")
        same = all(after[n] == before[n] for n in names)
        say("UNCHANGED", same, _core.rdpkru() == pkru, keys[15].hardware_key)
        with assocs[15].set_access_rights(NA):  # NoAccess takes no number: never refused
            pass
    # One guard left: the next entry takes its key's number (freeing one makes one available).
    with assocs[15].set_access_rights(RO) as r:
        say("REUSED", r.ref_guard().value)
    # Keys with initial rights take only numbers of their own class and never evict: all 15
    # are NoAccess-class now, so none can be made in this process any more.
    try:
        PkeyGuard(RO)
        say("NOT REFUSED")
    except KeyExhaustedError as exc:
        say("PINNED REFUSED", exc.errno == errno.ENOSPC, "initial rights" in str(exc))


def case_exhaustion_pinned() -> None:
    # Keys with initial rights hold their numbers for life: after 15 nothing is left, for a
    # key with initial rights or for a NoAccess key's opening guard.
    pinned: list[PkeyGuard] = []
    try:
        for _ in range(16):
            pinned.append(PkeyGuard(RO))
    except KeyExhaustedError as exc:
        why = "initial rights" in str(exc)
        say("PINNED", len(pinned), exc.errno == errno.ENOSPC, why)
    key, region = PkeyGuard(), RegionGuard(ctypes.c_uint32)
    assoc = key.associate(region)
    try:
        with assoc.set_access_rights(RO):
            say("NOT REFUSED")
    except KeyExhaustedError:
        say("VIRTUAL REFUSED", key.hardware_key)
    # A closed one's number stays for keys with initial rights only (another thread may have
    # inherited its rights): the NoAccess key is still refused, the next pinned key gets it.
    number = pinned[0].hardware_key
    pinned.pop(0).close()
    try:
        with assoc.set_access_rights(RO):
            say("NOT REFUSED")
    except KeyExhaustedError:
        say("QUARANTINED", stats()["quarantined"])
    again = PkeyGuard(RO)
    say("AGAIN", again.hardware_key == number)


def case_initial_pkru() -> None:
    pkeyguard.backend()
    say(hex(_core.rdpkru()))
