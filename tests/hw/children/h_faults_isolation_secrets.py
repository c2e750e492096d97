"""Child programs of ``tests/hw/test_faults_isolation_secrets.py``: pkeyguard's fault
reporter (``pkeyguard.faults``) explains the fault that kills each of them."""

from __future__ import annotations

import ctypes
import os

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, Secret, isolate
from tests.childhelpers import say


def scene() -> tuple[ctypes.CDLL, RegionGuard[ctypes.c_int]]:
    """The reporter on; a ReadWrite key's region holding 77 (``ADDR .. KEY ..`` printed)."""
    pkeyguard.faults.enable()
    native = ctypes.CDLL(os.environ["FAULTPROBE"])
    native.faultprobe_read.argtypes = [ctypes.c_void_p]
    native.faultprobe_write.argtypes = [ctypes.c_void_p, ctypes.c_int]
    region = RegionGuard(ctypes.c_int, name="session-key")
    key = PkeyGuard(PkeyPermissions.ReadWrite, name="sessions")
    key.associate(region)
    ctypes.c_int.from_address(region.address).value = 77
    say("ADDR", hex(region.address), "KEY", key.hardware_key)
    return native, region


def case_write_under_read_only() -> None:
    native, region = scene()
    assoc = region.association
    assert assoc is not None
    with assoc.set_access_rights(PkeyPermissions.ReadOnly):
        native.faultprobe_write(region.address + 4, 1)


def case_isolated_native_call() -> None:
    native, region = scene()
    say("outside", native.faultprobe_read(region.address))
    isolate(native.faultprobe_read, region.address)
    say("NOT REACHED")


def case_stray_read_of_a_secret() -> None:
    pkeyguard.faults.enable()
    s = Secret.from_bytes(b"hunter2", name="db-password")
    ctypes.string_at(s.address, 7)
