"""Class 3: guards of a thread that ends are ended with it; a fork child keeps only the
forking thread's guards.

Threads die inside guards entered with a manual ``__enter__`` (nested, on several keys,
inside ``isolated()``); later ``__exit__`` calls come from the main thread and from new
threads that reuse the dead thread's ident; a fork happens while another thread holds a
guard.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack

_DEAD = """
key = PkeyGuard()
region = RegionGuard(ctypes.c_uint32)
assoc = key.associate(region)
key2 = PkeyGuard()
region2 = RegionGuard(64)
assoc2 = key2.associate(region2)
box = {}


def worker():
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
    f"guards of a finished thread still count: key {key.active_guards}, key2 {key2.active_guards}")
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
"""


def test_guards_of_a_finished_thread_are_ended() -> None:
    """Class 3: a thread that ends inside nested guards on two keys: its guards become
    inactive, their views raise ViewError, active_guards drops to 0, its rights stop
    counting (pages back to NoAccess on mprotect), a later __exit__ from the main thread
    raises GuardStateError, and disassociate()/region.close()/key.close() work again."""
    assert_survived(attack(_DEAD, timeout=60, watchdog=30))


_REUSE = """
key = PkeyGuard()
region = RegionGuard(64)
assoc = key.associate(region)
same = 0
for attempt in range(PARAMS["rounds"]):
    box = {}

    def dier():
        g = assoc.set_access_rights(RW)
        g.__enter__()
        box.update(g=g, v=g.mut_ref_guard(), ident=threading.get_ident())

    t = threading.Thread(target=dier)
    t.start()
    t.join()
    # (checked after the new thread had its go, so that the old core shows its crash)
    ended = wait_until(lambda: key.active_guards == 0, 3)

    def reuser():
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
print("ident reused in", same, "of", PARAMS["rounds"], "rounds", flush=True)
assert same > 0, "no new thread got a dead thread's ident: the attack did not happen"
region.close()
key.close()
"""


def test_exit_from_a_new_thread_with_the_dead_threads_ident() -> None:
    """Class 3: a thread enters a guard and ends; a new thread (which usually gets the same
    threading.get_ident()) calls that guard's __exit__ and uses its view: GuardStateError
    and ViewError, and the new thread then uses the key normally (the old core
    dereferences a NULL stack top here: SIGSEGV)."""
    assert_survived(attack(_REUSE, params={"rounds": 30}, timeout=60, watchdog=40))


_STACKS = """
import random

rnd = random.Random(PARAMS["seed"])
snap = snapshot()
keys = [PkeyGuard() for _ in range(2)]
regions = [RegionGuard(ctypes.c_uint64) for _ in range(2)]
assocs = [k.associate(r) for k, r in zip(keys, regions)]
for round_ in range(PARAMS["rounds"]):
    plan = [(rnd.randrange(2), rnd.choice([NA, RO, RW])) for _ in range(rnd.randint(1, 4))]
    use_isolated = rnd.random() < 0.3
    box = {}

    def dier():
        entered = []
        if use_isolated:
            cm = isolated()
            cm.__enter__()
            box["cm"] = cm
        for i, rights in plan:
            g = assocs[i].set_access_rights(rights)
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
    res = {}

    def other():
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
        try:
            cm.__exit__(None, None, None)
        except PkeyguardError:
            pass
    del box, cm
for a in assocs:
    a.disassociate()
for r in regions:
    r.close()
for k in keys:
    k.close()
assert_clean(snap, "threads dying in guard stacks")
"""


def test_threads_dying_in_random_guard_stacks() -> None:
    """Class 3 (seeded random rounds): threads die inside random stacks of guards on two
    keys, sometimes inside isolated(); each time every guard ends, pages go back to
    NoAccess, another thread's __exit__ gets GuardStateError and the keys stay usable;
    at the end nothing leaks."""
    assert_survived(attack(_STACKS, params={"rounds": 30, "seed": 3}, timeout=90, watchdog=60))


_FORK = """
warnings.simplefilter("ignore", DeprecationWarning)
key = PkeyGuard()
region = RegionGuard(ctypes.c_uint32)
assoc = key.associate(region)
ready = threading.Event()
release = threading.Event()
box = {}


def holder():
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
        import traceback
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
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"fork child status {status:#x}"
    assert vm.value == 41
finally:
    gm.__exit__(None, None, None)
    release.set()
    t.join()
region.close()
key.close()
"""


def test_fork_child_keeps_only_the_forking_threads_guards() -> None:
    """Class 3: fork while another thread holds a ReadOnly guard and the forking thread a
    ReadWrite one: in the child the other thread's guard is ended (inactive, its view
    raises ViewError, its __exit__ raises GuardStateError), the forking thread's guard still
    works and exits normally, and the region and key can then be closed there."""
    assert_survived(attack(_FORK, timeout=60, watchdog=45))
