"""Class v1: attacks on virtual keys (issue 11) in the simulated pool (``MODE_SIM``), the
child programs of ``test_v01_virtual_keys.py``."""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, _core
from pkeyguard._backend import SIMULATED
from tests.adversarial.childlib import NA, RW

T = TypeVar("T")
M = _core.MODE_SIM

# Sets this thread's simulated PKRU (what a thread inherits on pku); not in _core.pyi.
sim_set_pkru: Callable[[int], None] = getattr(_core, "_sim_set_pkru")  # noqa: B009


def start() -> None:
    _core._pool_limit(M, 15)


def sim_key(rights: PkeyPermissions = NA) -> PkeyGuard:
    return SIMULATED.new_key(PkeyGuard, rights)


def bits(number: int | None) -> int:
    assert number is not None
    return (_core._sim_pkru() >> (2 * number)) & 3


def run_on_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def case_stale_thread_loses_a_number_that_was_free_at_its_first_entry() -> None:
    start()
    a, b = sim_key(), sim_key()
    ra, rb = RegionGuard(8), RegionGuard(8)
    aa, ab = a.associate(ra), b.associate(rb)
    with aa.set_access_rights(RW):
        inherited = _core._sim_pkru()  # what a thread started here gets on pku
        n = a.hardware_key
    stage: dict[str, int] = {}
    go_close, go_enter, go_check = threading.Event(), threading.Event(), threading.Event()

    def worker() -> None:
        sim_set_pkru(inherited)
        stage["start"] = bits(n)
        go_close.set()
        go_enter.wait(30)
        with ab.set_access_rights(NA):
            pass
        go_check.set()
        time.sleep(0.2)
        stage["after"] = bits(n)

    t = threading.Thread(target=worker)
    t.start()
    go_close.wait(30)
    a.close()
    go_enter.set()
    go_check.wait(30)
    c = sim_key()
    rc = RegionGuard(8)
    ac = c.associate(rc)
    with ac.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 0x5A
    t.join()
    assert c.hardware_key == n, (c.hardware_key, n)
    assert stage["start"] == 0, stage
    assert stage["after"] == 1, f"the worker still has number {n} open for key C: {stage}"


def case_stale_thread_never_keeps_rights_to_a_key_made_with_rights() -> None:
    start()
    v, w = sim_key(), sim_key()
    rv, rw = RegionGuard(8), RegionGuard(8)
    av, aw = v.associate(rv), w.associate(rw)
    with av.set_access_rights(RW):
        inherited = _core._sim_pkru()
        n = v.hardware_key
    v.close()
    pinned = sim_key(RW)
    assert pinned.hardware_key != n, f"a key made with rights took the inherited number {n}"

    def worker() -> tuple[int, int]:
        sim_set_pkru(inherited)
        with aw.set_access_rights(NA):
            pass
        return bits(n), bits(pinned.hardware_key)

    after, pinned_bits = run_on_thread(worker)
    assert after == 1, f"number {n} still open in the worker after its first entry"
    assert pinned_bits == 1, "the worker has rights to a key made with rights by another thread"


def case_collector_after_a_failed_untag_does_not_crash_the_pool() -> None:
    start()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _core._pool_limit(M, 1)
    k = sim_key()
    keep = RegionGuard(8)
    k.associate(keep)
    doomed: Any = RegionGuard(8)
    k.associate(doomed)
    with k.regions[0].set_access_rights(RW):
        pass
    n = k.hardware_key
    assert libc.munmap(doomed.address, doomed.mapped_size) == 0
    del doomed
    with warnings.catch_warnings():
        gc.collect()
    assert len(k.regions) == 1, k.regions
    other = sim_key()
    ro = RegionGuard(8)
    ao = other.associate(ro)
    try:
        with ao.set_access_rights(RW):
            pass
        raise AssertionError("the key whose pages kept the number gave it away")
    except pkeyguard.KeyExhaustedError:
        pass
    assert k.hardware_key == n
    k.close()
    _core._pool_limit(M, 2)
    with ao.set_access_rights(RW):
        assert other.hardware_key != n, "a retired number was used again"


def case_clearing_the_thread_state_dict_inside_a_guard_closes_the_number() -> None:
    start()
    _core._pool_limit(M, 1)
    a, b = sim_key(), sim_key()
    ra, rb = RegionGuard(8), RegionGuard(8)
    aa, ab = a.associate(ra), b.associate(rb)
    g = aa.set_access_rights(RW)
    g.__enter__()
    n = a.hardware_key
    assert bits(n) == 0
    get_dict: Any = ctypes.pythonapi.PyThreadState_GetDict
    get_dict.restype = ctypes.py_object
    get_dict().clear()
    key: Any = a
    assert key._opening == 0 and a.active_guards == 0
    assert bits(n) == 1, "the dropped guard left the number open on this thread"

    def other() -> int | None:
        with ab.set_access_rights(RW):
            return b.hardware_key

    assert run_on_thread(other) == n
    assert bits(n) == 1, "this thread could reach b's pages"
