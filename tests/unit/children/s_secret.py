"""Child programs of ``tests/unit/test_secret.py``: accesses that must fault, and the
locked-memory limit with CAP_IPC_LOCK dropped."""

from __future__ import annotations

import ctypes
import resource

from pkeyguard import MprotectError, RegionGuard, Secret, allocator
from tests.adversarial.childlib import params
from tests.childhelpers import drop_cap_ipc_lock, say


def backing() -> allocator.Backing:
    b = str(params()["backing"])
    assert b in ("memfd_secret", "mmap")
    return b  # type: ignore[return-value]


def case_touching_a_guard_page_faults() -> None:
    r = RegionGuard(100, allocator=allocator.Secure(backing=backing()))
    ctypes.memset(r.address, 1, 100)
    say("value ok")
    target = r.address - 1 if params()["where"] == "before" else r.address + r.mapped_size
    ctypes.memset(target, 1, 1)
    say("NOT REACHED")


def maps_lines() -> int:
    with open("/proc/self/maps", encoding="utf-8") as f:
        return f.read().count("\n")


def case_mlock_limit_error_names_the_limit() -> None:
    drop_cap_ipc_lock()
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (4096, 4096))
    before = maps_lines()
    try:
        RegionGuard(64 * 1024, allocator=allocator.Secure(backing=backing()))
    except MprotectError as exc:
        say("ERR", exc.errno, exc)
    after = maps_lines()
    say("MAPS", before == after)


def case_raw_read_outside_reveal_faults() -> None:
    s = Secret.from_bytes(b"hunter2")
    with s.reveal() as buf:
        say(bytes(buf))
    ctypes.string_at(s.address, 7)
    say("NOT REACHED")
