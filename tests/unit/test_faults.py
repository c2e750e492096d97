"""Fault reports on the mprotect backend (SEGV_ACCERR on a known region)."""

from __future__ import annotations

import re
import signal

import pkeyguard
from tests.support import run_child

SETUP = """
import ctypes, threading
import pkeyguard
from pkeyguard import *
pkeyguard.faults.enable()
region = RegionGuard(ctypes.c_uint64, name="api-token")
key = PkeyGuard(PkeyPermissions.NoAccess, name="tokens")
assoc = key.associate(region)
print("ADDR", hex(region.address), "KEY", key.key, flush=True)
"""


def test_write_under_read_only_is_explained() -> None:
    child = run_child(
        SETUP
        + """
def handler_of_requests():
    with assoc.set_access_rights(PkeyPermissions.ReadOnly):
        ctypes.c_uint64.from_address(region.address + 8).value = 1
handler_of_requests()
"""
    )
    assert child.returncode == -signal.SIGSEGV, child
    addr = int(re.search(r"ADDR (0x[0-9a-f]+)", child.stdout).group(1), 16)  # type: ignore[union-attr]
    err = child.stderr
    assert f"pkeyguard: protection fault: write at {addr + 8:#x} (SEGV_ACCERR" in err, err
    assert f"region: 'api-token (c_ulong)' [{addr:#x}, {addr + 4096:#x}) offset 8" in err
    assert re.search(r"^  key: \d+$", err, re.M) and re.search(r"^  thread: \d+$", err, re.M)
    # faulthandler follows with the Python traceback, down to the faulting line
    assert "Fatal Python error: Segmentation fault" in err
    assert re.search(r"line \d+ in handler_of_requests", err), err


def test_read_with_no_guard_is_explained() -> None:
    child = run_child(SETUP + "ctypes.c_uint64.from_address(region.address).value\n")
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault: read at" in child.stderr
    assert "region: 'api-token (c_ulong)'" in child.stderr


def test_unrelated_crash_is_not_misreported() -> None:
    child = run_child(SETUP + "ctypes.string_at(8, 1)\n")
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault" not in child.stderr
    assert "Fatal Python error: Segmentation fault" in child.stderr


def test_closed_region_is_forgotten() -> None:
    child = run_child(
        SETUP
        + """
other = RegionGuard(8, name="other")
a2 = key.associate(other)
addr = other.address
other.close()
m = ctypes.CDLL(None).mmap
m.restype = ctypes.c_void_p
c = ctypes
m.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
p = m(addr, 4096, 0, 0x22 | 0x10, -1, 0)   # PROT_NONE, MAP_PRIVATE|ANON|FIXED at the same spot
ctypes.string_at(p, 1)
"""
    )
    assert child.returncode == -signal.SIGSEGV
    assert "region: 'other" not in child.stderr


def test_disable_restores_the_previous_handler() -> None:
    child = run_child(
        """
import ctypes, faulthandler, pkeyguard
from pkeyguard import *
pkeyguard.faults.enable()
assert pkeyguard.faults.is_enabled() and faulthandler.is_enabled()
pkeyguard.faults.disable()
assert not pkeyguard.faults.is_enabled()
region = RegionGuard(8, name="quiet")
PkeyGuard().associate(region)
ctypes.string_at(region.address, 1)
"""
    )
    assert child.returncode == -signal.SIGSEGV
    assert "protection fault" not in child.stderr
    assert "Fatal Python error" in child.stderr  # faulthandler is still there


def test_enable_is_idempotent_in_process() -> None:
    was = pkeyguard.faults.is_enabled()
    try:
        pkeyguard.faults.enable()
        pkeyguard.faults.enable()
        assert pkeyguard.faults.is_enabled()
    finally:
        if not was:
            pkeyguard.faults.disable()
    assert pkeyguard.faults.is_enabled() is was
