"""Child programs of ``tests/unit/test_state_machine.py``: counterexamples the machine found,
each of which ran into a fault before its fix (run on the backend of the parent)."""

from __future__ import annotations

import ctypes

from pkeyguard import (
    AccessPermissions,
    GuardStateError,
    PkeyGuard,
    PkeyPermissions,
    RegionError,
    RegionGuard,
)
from tests.childhelpers import say


def case_protect_is_refused_while_a_guard_is_active() -> None:
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard()
    with key.associate(region).set_access_rights(PkeyPermissions.ReadWrite) as g:
        view = g.mut_ref_guard()
        try:
            region.protect(AccessPermissions.ReadOnly)
        except RegionError as exc:
            say("refused:", exc)
        view.value = 2  # faulted here when protect() was allowed
        say("wrote", view.value)
    region.protect(AccessPermissions.ReadOnly)  # outside the guard: fine
    say(region.access.name)


def case_guard_of_an_ended_association_gives_no_view() -> None:
    region = RegionGuard(ctypes.c_uint32)
    k1, k2 = PkeyGuard(), PkeyGuard()
    old = k1.associate(region)
    guard = old.set_access_rights(PkeyPermissions.ReadWrite)
    old.disassociate()
    k2.associate(region)
    try:
        with guard:
            guard.mut_ref_guard().value = 1  # faulted here before the fix
        say("NOT REACHED")
    except GuardStateError as exc:
        say("refused:", exc)
