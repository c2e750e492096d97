"""Child programs of ``tests/unit/test_faults.py``: each dies of SIGSEGV with pkeyguard's
fault reporter (or only faulthandler) explaining the fault on stderr."""

from __future__ import annotations

import ctypes
import faulthandler
from dataclasses import dataclass
from typing import Any

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard
from tests.childhelpers import say


@dataclass
class Scene:
    region: Any
    key: PkeyGuard
    assoc: Any


def scene() -> Scene:
    """The reporter on; a NoAccess key's region (``ADDR .. KEY ..`` printed)."""
    pkeyguard.faults.enable()
    region = RegionGuard(ctypes.c_uint64, name="api-token")
    key = PkeyGuard(PkeyPermissions.NoAccess, name="tokens")
    assoc = key.associate(region)
    say("ADDR", hex(region.address), "KEY", key.key)
    return Scene(region, key, assoc)


def case_write_under_read_only() -> None:
    s = scene()

    def handler_of_requests() -> None:
        with s.assoc.set_access_rights(PkeyPermissions.ReadOnly):
            ctypes.c_uint64.from_address(s.region.address + 8).value = 1

    handler_of_requests()


def case_read_with_no_guard() -> None:
    s = scene()
    ctypes.c_uint64.from_address(s.region.address).value  # noqa: B018


def case_unrelated_crash() -> None:
    scene()
    ctypes.string_at(8, 1)


def case_closed_region_is_forgotten() -> None:
    s = scene()
    other = RegionGuard(8, name="other")
    s.key.associate(other)
    addr = other.address
    other.close()
    m = ctypes.CDLL(None).mmap
    m.restype = ctypes.c_void_p
    c = ctypes
    m.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
    p = m(addr, 4096, 0, 0x22 | 0x10, -1, 0)  # PROT_NONE, MAP_PRIVATE|ANON|FIXED at the spot
    ctypes.string_at(p, 1)


def case_disable_restores_the_previous_handler() -> None:
    pkeyguard.faults.enable()
    assert pkeyguard.faults.is_enabled() and faulthandler.is_enabled()
    pkeyguard.faults.disable()
    assert not pkeyguard.faults.is_enabled()
    region = RegionGuard(8, name="quiet")
    PkeyGuard().associate(region)
    ctypes.string_at(region.address, 1)
