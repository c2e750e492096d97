"""Class 12: isolated() under key churn and from the wrong thread (the child side of
test_c12_isolated.py)."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any

from pkeyguard import GuardThreadError, PkeyGuard, PkeyguardError, RegionGuard, _core, isolated
from tests.adversarial.childlib import MPROTECT, NA, RW, assert_clean, params, snapshot
from tests.support import perms_at


def close_retrying(obj: PkeyGuard | RegionGuard[Any]) -> None:
    while True:
        try:
            obj.close()
            return
        except PkeyguardError:
            time.sleep(0)  # refused while an isolated() block holds a guard on it


def case_isolated_while_other_threads_create_and_close_keys() -> None:
    p = params()
    sys.setswitchinterval(1e-6)
    snap = snapshot()
    stop = threading.Event()
    churn_errors: list[str] = []

    def churn() -> None:
        try:
            live: list[tuple[PkeyGuard, RegionGuard[Any]]] = []
            while not stop.is_set():
                key = PkeyGuard()
                region: RegionGuard[Any] = RegionGuard(64)
                key.associate(region)
                live.append((key, region))
                if len(live) > 8:
                    key, region = live.pop(0)
                    close_retrying(region)
                    close_retrying(key)
            for key, region in live:
                close_retrying(region)
                close_retrying(key)
        except BaseException as exc:
            churn_errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=churn) for _ in range(p["threads"])]
    for t in threads:
        t.start()
    mine = PkeyGuard()
    my_region = RegionGuard(ctypes.c_uint32)
    my_assoc = mine.associate(my_region)
    errors: list[str] = []
    try:
        for i in range(p["rounds"]):
            try:
                with isolated() as closed:
                    if isinstance(closed, (list, tuple, set, frozenset)):
                        assert mine in closed, "isolated() skipped a key that was open all along"
                    if MPROTECT and i % 50 == 0:
                        assert perms_at(my_region.address) == "---p"
                with isolated(allow=[mine]), my_assoc.set_access_rights(RW) as g:
                    g.mut_ref_guard().value = i
            except BaseException as exc:
                errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            assert _core.thread_guards() == [], "isolated() left a guard behind"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} isolated() failures, e.g. {errors[:3]}"
    assert not churn_errors, churn_errors
    my_region.close()
    mine.close()
    assert_clean(snap, "isolated under key churn")


def case_isolated_exited_from_the_wrong_thread() -> None:
    snap = snapshot()
    k1 = PkeyGuard()
    r1 = RegionGuard(ctypes.c_uint32)
    _a1 = k1.associate(r1)  # kept alive, as the string program kept it
    k2 = PkeyGuard()
    r2 = RegionGuard(ctypes.c_uint32)
    a2 = k2.associate(r2)
    outer = a2.set_access_rights(RW)
    outer.__enter__()
    cm = isolated()
    cm.__enter__()
    assert k1.current_rights() is NA and k2.current_rights() is NA
    before = _core.thread_guards()
    box: dict[str, str] = {}

    def wrong() -> None:
        try:
            cm.__exit__(None, None, None)
        except GuardThreadError:
            box["result"] = "GuardThreadError"
        except BaseException as exc:
            box["result"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        else:
            box["result"] = "returned normally"

    t = threading.Thread(target=wrong)
    t.start()
    t.join()
    assert box["result"] == "GuardThreadError", box
    assert len(_core.thread_guards()) == len(before), (
        "the refused exit changed this thread's guards"
    )
    assert k1.current_rights() is NA and k2.current_rights() is NA, "rights changed"
    assert not cm.__exit__(None, None, None)
    assert len(_core.thread_guards()) == 1, _core.thread_guards()
    assert k2.current_rights() is RW, k2.current_rights()
    outer.__exit__(None, None, None)
    for r in (r1, r2):
        r.close()
    for k in (k1, k2):
        k.close()
    assert_clean(snap, "isolated() exited from the wrong thread")
