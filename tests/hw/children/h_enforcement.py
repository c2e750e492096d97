"""Child programs of ``tests/hw/test_enforcement.py``: each makes a ReadWrite-written region
under a NoAccess key (printing ``KEY n``), then does a raw access the CPU must stop; the fault
probe reports the fault on stderr and the child dies of SIGSEGV."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import pkeyguard
from pkeyguard import AccessPermissions, PkeyGuard, PkeyPermissions, RegionGuard
from tests.childhelpers import probe, say


@dataclass
class Scene:
    lib: ctypes.CDLL
    region: Any
    key: PkeyGuard
    assoc: Any
    addr: ctypes.c_void_p


def scene() -> Scene:
    lib = probe()
    assert pkeyguard.backend().name == "pku"
    region = RegionGuard(ctypes.c_int, AccessPermissions.ReadWrite)
    key = PkeyGuard(PkeyPermissions.NoAccess)
    assoc = key.associate(region)
    addr = ctypes.c_void_p(region.address)
    with assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
        g.mut_ref_guard().value = 42
    say("KEY", key.hardware_key)
    return Scene(lib, region, key, assoc, addr)


def case_write_under_read_only() -> None:
    s = scene()
    with s.assoc.set_access_rights(PkeyPermissions.ReadOnly):
        say("read", s.lib.faultprobe_read(s.addr))
        s.lib.faultprobe_write(s.addr, 7)
    say("NOT REACHED")


def case_read_under_no_access() -> None:
    s = scene()
    with s.assoc.set_access_rights(PkeyPermissions.NoAccess):
        s.lib.faultprobe_read(s.addr)
    say("NOT REACHED")


def case_read_outside_any_guard() -> None:
    s = scene()
    s.lib.faultprobe_read(s.addr)
    say("NOT REACHED")


def case_page_rights_under_read_write() -> None:
    s = scene()
    s.region.protect(AccessPermissions.ReadOnly)
    with s.assoc.set_access_rights(PkeyPermissions.ReadWrite):
        say("read", s.lib.faultprobe_read(s.addr))
        s.lib.faultprobe_write(s.addr, 1)
    say("NOT REACHED")


def case_other_thread() -> None:
    s = scene()
    opened = threading.Event()

    def other() -> None:
        opened.wait()
        say("B rights", s.key.current_rights().name)
        s.lib.faultprobe_read(s.addr)  # B holds no guard: must fault
        say("NOT REACHED")

    t = threading.Thread(target=other)
    t.start()
    with s.assoc.set_access_rights(PkeyPermissions.ReadWrite):
        say("A reads", s.lib.faultprobe_read(s.addr))
        opened.set()
        t.join(30)
