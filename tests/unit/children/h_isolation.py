"""Child program of ``tests/unit/test_isolation.py``: native code run by ``isolate()`` faults
on a region it was not given, and the fault reporter names the region."""

from __future__ import annotations

import ctypes
import os

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, isolate
from tests.childhelpers import say


def case_native_code_under_isolation_dies_and_is_named() -> None:
    pkeyguard.faults.enable()
    parser = ctypes.CDLL(os.environ["FAULTPROBE"])
    parser.faultprobe_read.argtypes = [ctypes.c_void_p]
    region = RegionGuard(ctypes.c_int, name="session-key")
    key = PkeyGuard(PkeyPermissions.ReadWrite)
    key.associate(region)
    ctypes.c_int.from_address(region.address).value = 77
    say("outside", parser.faultprobe_read(region.address))
    isolate(parser.faultprobe_read, region.address)
    say("NOT REACHED")
