"""Class 3: guards of a thread that ends are ended with it; a fork child keeps only the
forking thread's guards (the child side of test_c03_thread_end_and_fork.py)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from pkeyguard import (
    GuardStateError,
    PkeyGuard,
    PkeyguardError,
    RegionGuard,
    ViewError,
    _core,
    isolated,
)
from pkeyguard.pkey import AssociatedRegion
from tests.adversarial.childlib import (
    MPROTECT,
    NA,
    RO,
    RW,
    assert_clean,
    params,
    raises,
    snapshot,
    wait_until,
)
from tests.support import perms_at


def case_guards_of_a_finished_thread_are_ended() -> None:
    key = PkeyGuard()
    region = RegionGuard(ctypes.c_uint32)
    assoc = key.associate(region)
    key2 = PkeyGuard()
    region2 = RegionGuard(64)
    assoc2 = key2.associate(region2)
    box: dict[str, Any] = {}

    def worker() -> None:
        g = assoc.set_access_rights(RW)
        g.__enter__()
        v = g.mut_ref_guard()
        v.value = 7
        g_in = assoc.set_access_rights(RO)
        g_in.__enter__()
        g2 = assoc2.set_access_rights(RW)
        g2.__enter__()
        v2 = g2.mut_ref_guard()
        v2[0] = 1
        box.update(g=g, g_in=g_in, g2=g2, v=v, v2=v2)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert wait_until(lambda: key.active_guards == 0 and key2.active_guards == 0, 3), (
        f"guards of a finished thread still count: key {key.active_guards}, "
        f"key2 {key2.active_guards}"
    )
    for name in ("g", "g_in", "g2"):
        assert not box[name].active, f"{name} is still active after its thread ended"
    raises(ViewError, lambda: box["v"].value)
    raises(ViewError, lambda: box["v2"][0])
    if MPROTECT:
        assert key.current_rights() is NA, key.current_rights()
        assert key2.current_rights() is NA, key2.current_rights()
        assert perms_at(region.address) == "---p", perms_at(region.address)
        assert perms_at(region2.address) == "---p", perms_at(region2.address)
    for name in ("g_in", "g", "g2"):
        raises(GuardStateError, box[name].__exit__, None, None, None)
    # The key and its regions are free again.
    with assoc.set_access_rights(RW) as g:
        assert g.mut_ref_guard().value == 7
    assoc2.disassociate()
    region2.close()
    region.close()
    key.close()
    key2.close()
    assert _core.thread_guards() == []


def case_exit_from_a_new_thread_with_the_dead_threads_ident() -> None:
    rounds = params()["rounds"]
    key = PkeyGuard()
    region = RegionGuard(64)
    assoc = key.associate(region)
    same = 0
    for _attempt in range(rounds):
        box: dict[str, Any] = {}

        def dier(box: dict[str, Any] = box) -> None:
            g = assoc.set_access_rights(RW)
            g.__enter__()
            box.update(g=g, v=g.mut_ref_guard(), ident=threading.get_ident())

        t = threading.Thread(target=dier)
        t.start()
        t.join()
        # (checked after the new thread had its go, so that the old core shows its crash)
        ended = wait_until(lambda: key.active_guards == 0, 3)

        def reuser(box: dict[str, Any] = box) -> None:
            try:
                box["same"] = threading.get_ident() == box["ident"]
                try:
                    box["g"].__exit__(None, None, None)
                except GuardStateError:
                    box["exit"] = "GuardStateError"
                except BaseException as exc:
                    box["exit"] = f"{type(exc).__name__}: {exc}"
                else:
                    box["exit"] = "returned normally"
                try:
                    box["v"][0] = 1
                except ViewError:
                    box["view"] = "ViewError"
                except BaseException as exc:
                    box["view"] = f"{type(exc).__name__}: {exc}"
                else:
                    box["view"] = "wrote through a dead thread's view"
                with assoc.set_access_rights(RW) as g2:
                    g2.mut_ref_guard()[0] = 5
                box["left"] = _core.thread_guards()
            except BaseException as exc:
                box["crash"] = f"{type(exc).__name__}: {exc}"

        t2 = threading.Thread(target=reuser)
        t2.start()
        t2.join()
        assert "crash" not in box, box
        assert ended, "a dead thread's guard still counts"
        assert box["exit"] == "GuardStateError", box
        assert box["view"] == "ViewError", box
        assert box["left"] == [], box
        same += box["same"]
    print("ident reused in", same, "of", rounds, "rounds", flush=True)
    assert same > 0, "no new thread got a dead thread's ident: the attack did not happen"
    region.close()
    key.close()


def case_threads_dying_in_random_guard_stacks() -> None:
    p = params()
    rnd = random.Random(p["seed"])
    snap = snapshot()
    keys = [PkeyGuard() for _ in range(2)]
    regions = [RegionGuard(ctypes.c_uint64) for _ in range(2)]
    assocs: list[AssociatedRegion[Any]] = [
        k.associate(r) for k, r in zip(keys, regions, strict=True)
    ]
    for round_ in range(p["rounds"]):
        plan = [(rnd.randrange(2), rnd.choice([NA, RO, RW])) for _ in range(rnd.randint(1, 4))]
        use_isolated = rnd.random() < 0.3
        box: dict[str, Any] = {}

        def dier(
            box: dict[str, Any] = box,
            plan: list[Any] = plan,
            use_isolated: bool = use_isolated,
            round_: int = round_,
        ) -> None:
            entered: list[Any] = []
            if use_isolated:
                cm = isolated()
                cm.__enter__()
                box["cm"] = cm
            for i, rights in plan:
                g: Any = assocs[i].set_access_rights(rights)
                g.__enter__()
                entered.append(g)
                if rights is RW:
                    g.mut_ref_guard().value = round_
            box["entered"] = entered

        t = threading.Thread(target=dier)
        t.start()
        t.join()
        ok = wait_until(lambda: all(k.active_guards == 0 for k in keys), 3)
        assert ok, f"round {round_} {plan}: guards still count {[k.active_guards for k in keys]}"
        for g in box["entered"]:
            assert not g.active, f"round {round_} {plan}: {g!r} still active"
        if MPROTECT:
            for r in regions:
                assert perms_at(r.address) == "---p", (round_, plan, perms_at(r.address))
        # Another thread exits one of them: GuardStateError; then uses both keys normally.
        res: dict[str, Any] = {}

        def other(box: dict[str, Any] = box, res: dict[str, Any] = res) -> None:
            try:
                g = box["entered"][-1]
                raises(GuardStateError, g.__exit__, None, None, None)
                for a in assocs:
                    with a.set_access_rights(RW) as g2:
                        g2.mut_ref_guard().value = 1
                res["left"] = _core.thread_guards()
            except BaseException as exc:
                res["crash"] = f"{type(exc).__name__}: {exc}"

        t2 = threading.Thread(target=other)
        t2.start()
        t2.join()
        assert "crash" not in res and res["left"] == [], (round_, plan, res)
        cm = box.pop("cm", None)
        if cm is not None:
            with contextlib.suppress(PkeyguardError):
                cm.__exit__(None, None, None)
        del box, cm
    for a in assocs:
        a.disassociate()
    for r in regions:
        r.close()
    for k in keys:
        k.close()
    assert_clean(snap, "threads dying in guard stacks")


def case_fork_child_keeps_only_the_forking_threads_guards() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)
    key = PkeyGuard()
    region = RegionGuard(ctypes.c_uint32)
    assoc = key.associate(region)
    ready = threading.Event()
    release = threading.Event()
    box: dict[str, Any] = {}

    def holder() -> None:
        g = assoc.set_access_rights(RO)
        g.__enter__()
        box.update(g=g, v=g.ref_guard())
        ready.set()
        release.wait(30)
        g.__exit__(None, None, None)

    t = threading.Thread(target=holder)
    t.start()
    assert ready.wait(10)
    gm = assoc.set_access_rights(RW)
    gm.__enter__()
    vm = gm.mut_ref_guard()
    vm.value = 41
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            gt = box["g"]
            assert not gt.active, "the other thread's guard is still active in the fork child"
            assert key.active_guards == 1, f"{key.active_guards} guards count in the child"
            assert gm.active, "the forking thread's guard ended in the child"
            vm.value = 42
            assert vm.value == 42
            raises(ViewError, lambda: box["v"].value)
            raises(GuardStateError, gt.__exit__, None, None, None)
            gm.__exit__(None, None, None)
            assert key.active_guards == 0, key.active_guards
            assert _core.thread_guards() == []
            if MPROTECT:
                assert perms_at(region.address) == "---p", perms_at(region.address)
            region.close()
            key.close()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    try:
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("the fork child hung")
            time.sleep(0.01)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            f"fork child status {status:#x}"
        )
        assert vm.value == 41
    finally:
        gm.__exit__(None, None, None)
        release.set()
        t.join()
    region.close()
    key.close()
