"""Class 12: isolated() keeps working while other threads create and close keys, and an
isolated() block exited from the wrong thread raises GuardThreadError and can then be left
from the right one."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack

_CHURN = """
sys.setswitchinterval(1e-6)
snap = snapshot()
stop = threading.Event()
churn_errors = []


def close_retrying(obj):
    while True:
        try:
            obj.close()
            return
        except PkeyguardError:
            time.sleep(0)   # refused while an isolated() block holds a guard on it


def churn():
    try:
        live = []
        while not stop.is_set():
            key = PkeyGuard()
            region = RegionGuard(64)
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


threads = [threading.Thread(target=churn) for _ in range(PARAMS["threads"])]
for t in threads:
    t.start()
mine = PkeyGuard()
my_region = RegionGuard(ctypes.c_uint32)
my_assoc = mine.associate(my_region)
errors = []
try:
    for i in range(PARAMS["rounds"]):
        try:
            with isolated() as closed:
                if isinstance(closed, (list, tuple, set, frozenset)):
                    assert mine in closed, "isolated() skipped a key that was open all along"
                if MPROTECT and i % 50 == 0:
                    assert perms_at(my_region.address) == "---p"
            with isolated(allow=[mine]):
                with my_assoc.set_access_rights(RW) as g:
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
"""


def test_isolated_while_other_threads_create_and_close_keys() -> None:
    """Class 12: two threads keep creating keys (with a region each) and closing them (a
    close refused by an active isolated() block is retried) while the main thread runs
    isolated() blocks: no "Set changed size during iteration", no GuardStateError for a key
    closed in the meantime, no guard left behind, nothing leaked."""
    child = attack(_CHURN, params={"threads": 2, "rounds": 1500}, timeout=120, watchdog=90)
    assert_survived(child)


_WRONG_THREAD = """
snap = snapshot()
k1 = PkeyGuard()
r1 = RegionGuard(ctypes.c_uint32)
a1 = k1.associate(r1)
k2 = PkeyGuard()
r2 = RegionGuard(ctypes.c_uint32)
a2 = k2.associate(r2)
outer = a2.set_access_rights(RW)
outer.__enter__()
cm = isolated()
cm.__enter__()
assert k1.current_rights() is NA and k2.current_rights() is NA
before = _core.thread_guards()
box = {}


def wrong():
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
assert len(_core.thread_guards()) == len(before), "the refused exit changed this thread's guards"
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
"""


def test_isolated_exited_from_the_wrong_thread() -> None:
    """Class 12: an isolated() block (inside a ReadWrite guard) exited from another thread
    raises GuardThreadError and changes nothing; exited afterwards from the right thread it
    restores the rights (ReadWrite again) and leaves only the outer guard (the old generator
    finishes on the wrong thread: the block can never be left and its guards stay)."""
    assert_survived(attack(_WRONG_THREAD, timeout=60, watchdog=30))
