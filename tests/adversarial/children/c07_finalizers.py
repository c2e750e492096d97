"""Class 7: finalizers release memory and keys exactly once, whatever the order in which
objects die (the child side of test_c07_finalizers.py).

The cases about interpreter exit keep their objects in :data:`ALIVE` (a module global, as the
string programs' globals were), so that they are still open when the exit hooks run.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import pkeyguard
from pkeyguard import PkeyGuard, PkeyguardError, RegionGuard, Secret, allocator
from tests.adversarial.childlib import RW, assert_clean, hunt_settings, params, raises, snapshot
from tests.support import perms_at

#: Objects that must live until interpreter exit (the exit cases).
ALIVE: list[object] = []

unraisable: list[str] = []


def record_unraisable() -> None:
    def hook(u: sys.UnraisableHookArgs) -> None:
        unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")

    sys.unraisablehook = hook


def case_region_and_key_dropped_together() -> None:
    p = params()
    snap = snapshot()
    record_unraisable()
    for i in range(p["rounds"]):
        key: Any
        region: Any
        if p["order"] == "key-first":
            key = PkeyGuard()
            region = RegionGuard(64)
        else:
            region = RegionGuard(64)
            key = PkeyGuard()
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[0] = i % 256
        if p["shape"] == "cycle":
            holder: list[object] = [key, region, assoc, g]
            holder.append(holder)
            del holder
        del key, region, assoc, g
        if i % 3 == 0:
            gc.collect()
    assert_clean(snap, f"{p}")
    assert not unraisable, unraisable[:3]


saved: list[tuple[Any, ...]] = []


class Holder:
    def __init__(self, *objs: object) -> None:
        self.objs = objs
        self.me = self

    def __del__(self) -> None:
        saved.append(self.objs)


def check_region(r: Any) -> None:
    # Open and mapped (and usable), or closed; never open over unmapped pages.
    if r.closed:
        k = PkeyGuard()
        raises(PkeyguardError, k.associate, r)
        k.close()
        return
    assert perms_at(r.address) != "", "a resurrected region reports open but is unmapped"
    assoc = r.association
    if assoc is None or not assoc.associated:
        k = PkeyGuard()
        assoc = k.associate(r)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 0x42
        assert g.ref_guard()[0] == 0x42


def check_newcomer_survives(r: Any) -> None:
    # A new region (which may get the dead one's address) survives r.close().
    newcomer = RegionGuard(64)
    k = PkeyGuard()
    a = k.associate(newcomer)
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 7
    r.close()
    with a.set_access_rights(RW) as g:
        assert g.mut_ref_guard()[0] == 7
    newcomer.close()
    k.close()


def _resurrect_region() -> None:
    r: Any = RegionGuard(64)
    Holder(r)
    del r
    gc.collect()
    (r,) = saved.pop()
    check_region(r)
    check_newcomer_survives(r)


def _resurrect_key_region_assoc() -> None:
    r: Any = RegionGuard(64)
    k: Any = PkeyGuard()
    a: Any = k.associate(r)
    Holder(r, k, a)
    del r, k, a
    gc.collect()
    r, k, a = saved.pop()
    if k.closed:
        raises(PkeyguardError, a.set_access_rights, RW)
    check_region(r)
    check_newcomer_survives(r)
    k.close()


def _resurrect_secure_region() -> None:
    r: Any = RegionGuard(64, allocator=allocator.Secure(lock=False))
    Holder(r)
    del r
    gc.collect()
    (r,) = saved.pop()
    check_region(r)
    check_newcomer_survives(r)


def _resurrect_secret() -> None:
    s: Any = Secret.from_bytes(bytearray(b"resurrect me"))
    Holder(s)
    del s
    gc.collect()
    (s,) = saved.pop()
    if s.closed:
        raises(PkeyguardError, lambda: s.reveal().__enter__())
    else:
        with s.reveal() as b:
            assert bytes(b) == b"resurrect me"
    s.close()


RESURRECT: dict[str, Callable[[], None]] = {
    "region": _resurrect_region,
    "key-region-assoc": _resurrect_key_region_assoc,
    "secure-region": _resurrect_secure_region,
    "secret": _resurrect_secret,
}


def case_resurrection_by_del() -> None:
    snap = snapshot()
    record_unraisable()
    RESURRECT[params()["what"]]()
    saved.clear()
    assert_clean(snap, "resurrection")
    assert not unraisable, unraisable[:3]


def case_exit_while_daemon_works_inside_guard() -> None:
    kind = params()["kind"]
    atexit.register(time.sleep, 0.3)  # runs after the library's exit hooks: the daemon goes on
    region: RegionGuard[Any] = (
        RegionGuard(ctypes.c_uint64) if kind == "scalar" else RegionGuard(4096 * 3)
    )
    key = PkeyGuard()
    assoc = key.associate(region)
    ALIVE.extend((region, key, assoc))
    if kind == "bytes-cycle":
        cycle: list[object] = [region, key, assoc]
        cycle.append(cycle)
        del cycle
    started = threading.Event()

    def worker() -> None:
        with assoc.set_access_rights(RW) as g:
            v: Any = g.mut_ref_guard()
            started.set()
            n = 0
            while True:
                n += 1
                if kind == "scalar":
                    v.value = n
                else:
                    v[n % len(v)] = n % 256
                    bytes(v)

    threading.Thread(target=worker, daemon=True).start()
    assert started.wait(10)
    time.sleep(0.05)


def case_secrets_open_at_exit_are_wiped() -> None:
    atexit.register(time.sleep, 0.3)  # runs after the library's exit hooks: a daemon goes on

    def hook(address: int, length: int) -> None:
        os.write(1, b"WIPED %d\n" % (ctypes.string_at(address, length) == bytes(length)))

    alloc = allocator.Secure(lock=False, on_before_unmap=hook)
    s1 = Secret(32, allocator=alloc)
    s1.write(0, b"a" * 32)
    ALIVE.append(s1)
    s2 = Secret(16, allocator=alloc)
    s2.write(0, b"b" * 16)
    cycle: list[object] = [s2]
    cycle.append(cycle)
    del s2, cycle
    if params()["daemon"]:
        busy = Secret.from_bytes(bytearray(b"revealed by a daemon"))
        ALIVE.append(busy)
        started = threading.Event()

        def revealer() -> None:
            while True:
                with busy.reveal() as b:
                    hashlib.sha256(b).digest()
                    started.set()
                    time.sleep(0.02)  # inside the block, without the GIL, most of the time
                    hashlib.sha256(b).digest()

        threading.Thread(target=revealer, daemon=True).start()
        assert started.wait(10)
    print("SECRETS 2", flush=True)


def case_exit_with_open_key_and_region_is_clean() -> None:
    p = params()
    key: PkeyGuard
    region: RegionGuard[Any]
    if p["order"] == "key-first":
        key = PkeyGuard()
        region = RegionGuard(ctypes.c_uint32)
    else:
        region = RegionGuard(ctypes.c_uint32)
        key = PkeyGuard()
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 9
    ALIVE.extend((key, region, assoc, g))
    if p["secret"]:
        ALIVE.append(Secret.from_bytes(bytearray(b"left open")))


class HuntHolder:
    def __init__(self, objs: tuple[Any, ...], resurrect: bool) -> None:
        self.objs = objs
        self.resurrect = resurrect
        self.me = self

    def __del__(self) -> None:
        if self.resurrect:
            saved.append(self.objs)


def make(kind: str, key_first: bool) -> tuple[Any, ...]:
    if kind == "secret":
        return (Secret.from_bytes(bytearray(b"gc pressure")),)
    alloc = allocator.Secure(lock=False) if kind == "secure-region" else None
    k: PkeyGuard | None = None
    if key_first and kind == "key+region":
        k = PkeyGuard()
    r = RegionGuard(ctypes.c_uint32, allocator=alloc)
    if kind != "key+region":
        return (r,)
    if not key_first:
        k = PkeyGuard()
    assert k is not None
    a = k.associate(r)
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 1
    return (r, k, a, g)


def settle(obj: object) -> None:
    if isinstance(obj, RegionGuard):
        if not obj.closed:
            assert perms_at(obj.address) != "", "a resurrected region is open but unmapped"
        obj.close()
    elif isinstance(obj, PkeyGuard):
        obj.close()
    elif isinstance(obj, Secret):
        if not obj.closed:
            with obj.reveal() as b:
                assert bytes(b) == b"gc pressure"
        obj.close()


Plan = list[tuple[str, str, bool]]


def case_hunt() -> None:
    record_unraisable()

    @hunt_settings()
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["region", "secure-region", "key+region", "secret"]),
                st.sampled_from(["drop", "cycle", "holder", "resurrect"]),
                st.booleans(),
            ),
            min_size=1,
            max_size=6,
        ),
        st.booleans(),
    )
    def hunt(plan: Plan, collect_each: bool) -> None:
        print("plan", plan, collect_each, flush=True)
        snap = snapshot()
        gc.set_threshold(1)
        try:
            for kind, fate, key_first in plan:
                objs = make(kind, key_first)
                if fate == "cycle":
                    cyc: list[object] = list(objs)
                    cyc.append(cyc)
                    del cyc
                elif fate in ("holder", "resurrect"):
                    HuntHolder(objs, fate == "resurrect")
                del objs
                if collect_each:
                    gc.collect()
            gc.collect()
            while saved:
                for obj in saved.pop():
                    settle(obj)
                gc.collect()
        finally:
            gc.set_threshold(700, 10, 10)
        assert_clean(snap, f"plan {plan}")
        assert not unraisable, unraisable[:3]

    hunt()


def subclass(base: type) -> type:
    return type("Sub", (base,), {})


def case_classes_are_final() -> None:
    targets: dict[str, Any] = {
        "RegionGuard": pkeyguard.RegionGuard,
        "RegionGuard[bytes]": pkeyguard.RegionGuard[bytes],
        "PkeyGuard": pkeyguard.PkeyGuard,
        "AssociatedRegion": pkeyguard.AssociatedRegion,
        "AccessGuard": pkeyguard.AccessGuard,
        "NoAccessGuard": pkeyguard.NoAccessGuard,
        "ReadGuard": pkeyguard.ReadGuard,
        "WriteGuard": pkeyguard.WriteGuard,
        "ScalarRef": pkeyguard.ScalarRef,
        "MutScalarRef": pkeyguard.MutScalarRef,
        "BytesRef": pkeyguard.BytesRef,
        "MutBytesRef": pkeyguard.MutBytesRef,
        "CompositeRef": pkeyguard.CompositeRef,
        "MutCompositeRef": pkeyguard.MutCompositeRef,
        "Secret": pkeyguard.Secret,
    }
    if params()["allocators"]:
        targets = {
            "Allocator": allocator.Allocator,
            "Mmap": allocator.Mmap,
            "Secure": allocator.Secure,
        }
    accepted: list[str] = []
    for name, cls in targets.items():
        try:
            subclass(cls)
        except TypeError:
            pass
        else:
            accepted.append(name)
    assert not accepted, f"subclassing accepted for: {accepted}"
