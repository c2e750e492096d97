"""Class 11: asynchronous exceptions (the child side of test_c11_signal_storm.py)."""

from __future__ import annotations

import ctypes
import hashlib
import random
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pkeyguard import PkeyGuard, PkeyguardError, RegionGuard, Secret, _core, isolated
from tests.adversarial.childlib import NA, RO, RW, assert_clean, params, snapshot
from tests.support import perms_at


class Storm:
    def __init__(self, extra_keys: int) -> None:
        self.base_key = PkeyGuard()
        self.base_region: RegionGuard[Any] = RegionGuard(64)
        self.base_assoc = self.base_key.associate(self.base_region)
        # More open keys: each isolated() block enters (and must unwind) one guard per key.
        self.extra_keys = [PkeyGuard() for _ in range(extra_keys)]
        self.secret_addresses: list[int] = []
        self.ops: dict[str, Callable[[], None]] = {
            f.__name__: f
            for f in (
                self.op_isolated,
                self.op_isolated_allow,
                self.op_guards,
                self.op_region,
                self.op_secret_bytes,
                self.op_secret_chunks,
                self.op_secret_dropped,
            )
        }

    def op_isolated(self) -> None:
        with isolated():
            pass

    def op_isolated_allow(self) -> None:
        with isolated(allow=[self.base_key]), self.base_assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[0] = 1

    def op_guards(self) -> None:
        with self.base_assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            v[1] = 2
            with self.base_assoc.set_access_rights(RO) as r:
                r.ref_guard()[1]
                with self.base_assoc.set_access_rights(NA):
                    pass
            with memoryview(v) as m:
                m[2] = 3

    def op_region(self) -> None:
        region = RegionGuard(ctypes.c_uint32)
        try:
            key = PkeyGuard()
            try:
                assoc = key.associate(region)
                with assoc.set_access_rights(RW) as g:
                    g.mut_ref_guard().value = 3
                assoc.disassociate()
            finally:
                key.close()
        finally:
            region.close()

    def op_secret_bytes(self) -> None:
        s = Secret.from_bytes(bytearray(b"storm secret " * 4))
        self.secret_addresses.append(s.address)
        try:
            with s.reveal() as b:
                hashlib.sha256(b).digest()
        finally:
            s.close()

    def op_secret_chunks(self) -> None:
        s = Secret.from_chunks([b"a" * 100, bytearray(b"b" * 5000), memoryview(b"c" * 10)])
        self.secret_addresses.append(s.address)
        s.close()

    def op_secret_dropped(self) -> None:
        s = Secret.from_bytes(bytearray(b"dropped"))
        self.secret_addresses.append(s.address)
        del s


def case_keyboard_interrupt_storm() -> None:
    p = params()
    rnd = random.Random(p["seed"])
    # Warm every path once (lazily created library state is not a leak).
    with isolated():
        pass
    Secret.from_chunks([b"warm", b"up"]).close()
    warm_key = PkeyGuard()
    warm_region = RegionGuard(ctypes.c_uint32)
    warm_key.associate(warm_region)
    warm_region.close()
    warm_key.close()
    snap = snapshot()

    storm = Storm(p["extra_keys"])
    ops = [storm.ops[name] for name in p["ops"]]
    armed = [False]
    counts = {"interrupted": 0, "completed": 0, "stray": 0}
    errors: list[str] = []

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    deadline = time.monotonic() + p["seconds"]
    try:
        while time.monotonic() < deadline:
            try:
                period = rnd.choice([50e-6, 80e-6, 120e-6, 200e-6])
                signal.setitimer(signal.ITIMER_REAL, period, period)
                for op in ops:
                    try:
                        armed[0] = True
                        op()
                        counts["completed"] += 1
                    except KeyboardInterrupt:
                        counts["interrupted"] += 1
                    except PkeyguardError:
                        counts.setdefault("pkeyguard errors", 0)
                        counts["pkeyguard errors"] += 1
                    except BaseException as exc:
                        kind = f"{type(exc).__module__}.{type(exc).__name__}"
                        errors.append(f"{op.__name__}: {kind}: {exc}")
                    finally:
                        armed[0] = False
            except KeyboardInterrupt:
                counts["stray"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        armed[0] = False
    print("storm", counts, flush=True)
    assert counts["interrupted"] > 0 and counts["completed"] > 0, counts
    assert not errors, errors[:5]
    left = _core.thread_guards()
    assert left == [], f"guards left on the thread after the storm: {left!r}"
    with storm.base_assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 9
    storm.base_region.close()
    storm.base_key.close()
    for k in storm.extra_keys:
        k.close()
    assert_clean(snap, "signal storm")  # the secrets' key is freed: no secret is left bound
    for address in set(storm.secret_addresses):
        # The kernel may have reused the address for other memory since (a Python arena,
        # say): what must not be there is a secret's closed pages.
        assert perms_at(address) in ("", "rw-p"), (
            f"a secret's pages are still mapped at {address:#x}"
        )
