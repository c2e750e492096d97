"""Child-side helpers shared by the unit and hardware child programs (``tests/*/children``).

A child module imports what it needs from here (and from :mod:`tests.adversarial.childlib`);
:func:`tests.adversarial.support.run_case` runs one of its ``case_*`` functions in a fresh
interpreter.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from typing import Any

from tests.support import smaps_field

__all__ = ["bits", "drop_cap_ipc_lock", "params", "probe", "say", "tag"]


def params() -> dict[str, Any]:
    """The parameters the parent passed (``run_case(params=...)``, JSON), without importing
    pkeyguard (:func:`tests.adversarial.childlib.params` does: its module asks for the
    backend at import), for a case that must act before the library is loaded."""
    value = json.loads(os.environ.get("PKEYGUARD_CASE_PARAMS", "{}"))
    assert isinstance(value, dict)
    return value


@functools.cache
def probe() -> ctypes.CDLL:
    """The test-only fault reporter (``tests/native/faultprobe.c``, built by the parent's
    ``faultprobe_path`` fixture and named by ``$FAULTPROBE``), installed as the SIGSEGV
    handler: a fault prints ``FAULT signo=.. code=.. pkey=..`` on stderr and kills the child."""
    lib = ctypes.CDLL(os.environ["FAULTPROBE"])
    assert lib.faultprobe_install() == 0
    lib.faultprobe_read.argtypes = [ctypes.c_void_p]
    lib.faultprobe_read.restype = ctypes.c_int
    lib.faultprobe_write.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.faultprobe_handler_pkru.restype = ctypes.c_uint32
    return lib


def say(*words: object) -> None:
    """One line on stdout, flushed (the parent reads it even if the child dies next)."""
    print(*words, flush=True)


def bits(pkru: int, number: int) -> int:
    """The two bits of key ``number`` in the register value ``pkru``."""
    return (pkru >> (2 * number)) & 3


def tag(address: int) -> int | None:
    """The ProtectionKey of the mapping holding ``address`` (from /proc/self/smaps)."""
    words = smaps_field(address, "ProtectionKey")
    return int(words[0]) if words else None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_cap_ipc_lock() -> None:
    """Drop CAP_IPC_LOCK from the effective set, so that RLIMIT_MEMLOCK applies to root too
    (capget/capset, version 3 of the capability ABI)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective &= ~(1 << 14)
    assert libc.capset(ctypes.byref(header), data) == 0
