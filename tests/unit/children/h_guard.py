"""Child programs of ``tests/unit/test_guard.py``: raw accesses the mprotect backend stops
(each dies of SIGSEGV)."""

from __future__ import annotations

import ctypes

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard
from tests.childhelpers import say


def case_touching_memory_without_a_guard_faults() -> None:
    region = RegionGuard(ctypes.c_uint32)
    key = PkeyGuard(PkeyPermissions.NoAccess)
    assoc = key.associate(region)
    with assoc.set_access_rights(PkeyPermissions.ReadWrite):
        ctypes.c_uint32.from_address(region.address).value = 5
    say("inside ok")
    ctypes.c_uint32.from_address(region.address).value  # noqa: B018  # no guard: must fault
    say("NOT REACHED")


def case_write_under_read_only_faults() -> None:
    region = RegionGuard(ctypes.c_uint32)
    assoc = PkeyGuard(PkeyPermissions.NoAccess).associate(region)
    with assoc.set_access_rights(PkeyPermissions.ReadOnly):
        say(ctypes.c_uint32.from_address(region.address).value)
        ctypes.c_uint32.from_address(region.address).value = 1
    say("NOT REACHED")
