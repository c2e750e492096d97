"""Class v1: attacks on virtual keys (issue 11), in the simulated pool (``MODE_SIM``: the pku
backend's pool with a thread-local PKRU and mprotect tags), so they run on any machine.

A thread that inherited a number open (the CPU copies PKRU at thread creation; here
``_sim_set_pkru`` plays that part) must have every NoAccess-class number closed from its
first guard entry on, whatever happens to the number before or after; the collector taking
a region apart after a failed untag must not leave the pool walking a dead binding; and user
code that clears a thread's state dict inside a guard must not leave the thread's number
open while the pool thinks the key can be evicted.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, attack

_SIM = """
from pkeyguard._backend import SIMULATED
M = _core.MODE_SIM
_core._pool_limit(M, 15)


def sim_key(rights=NA):
    return SIMULATED.new_key(PkeyGuard, rights)


def bits(number):
    return (_core._sim_pkru() >> (2 * number)) & 3


def run_on_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]
"""


def test_stale_thread_loses_a_number_that_was_free_at_its_first_entry() -> None:
    """A worker inherits A's number open, A closes (its number is then free), the worker
    enters a guard on B, and a new key C takes A's old number: the worker must not have it
    open (before the fix the sync skipped numbers without an owner, and C's pages were
    readable by the worker)."""
    child = attack(
        _SIM
        + """
a, b = sim_key(), sim_key()
ra, rb = RegionGuard(8), RegionGuard(8)
aa, ab = a.associate(ra), b.associate(rb)
with aa.set_access_rights(RW):
    inherited = _core._sim_pkru()      # what a thread started here gets on pku
    n = a.hardware_key
stage = {}
go_close, go_enter, go_check = threading.Event(), threading.Event(), threading.Event()


def worker():
    _core._sim_set_pkru(inherited)
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
"""
    )
    assert_survived(child)


def test_stale_thread_never_keeps_rights_to_a_key_made_with_rights() -> None:
    """A worker inherits V's number open; V closes; a key made with ReadWrite must not get
    that number (the sync never closes such keys' numbers, so the worker would keep the
    access for good), and the worker's first entry closes the old number."""
    child = attack(
        _SIM
        + """
v, w = sim_key(), sim_key()
rv, rw = RegionGuard(8), RegionGuard(8)
av, aw = v.associate(rv), w.associate(rw)
with av.set_access_rights(RW):
    inherited = _core._sim_pkru()
    n = v.hardware_key
v.close()
pinned = sim_key(RW)
assert pinned.hardware_key != n, f"a key made with rights took the inherited number {n}"


def worker():
    _core._sim_set_pkru(inherited)
    with aw.set_access_rights(NA):
        pass
    return bits(n), bits(pinned.hardware_key)


after, pinned_bits = run_on_thread(worker)
assert after == 1, f"number {n} still open in the worker after its first entry"
assert pinned_bits == 1, "the worker has rights to a key made with rights by another thread"
"""
    )
    assert_survived(child)


def test_collector_after_a_failed_untag_does_not_crash_the_pool() -> None:
    """The untag of a region the collector takes apart fails (here its page was unmapped
    behind the library's back; at vm.max_map_count it is ENOMEM): the binding must end
    anyway, the key must never give its number away, and later evictions and the key's
    close must not touch a dead binding (it was a SIGSEGV)."""
    child = attack(
        _SIM
        + """
libc = ctypes.CDLL(None, use_errno=True)
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_core._pool_limit(M, 1)
k = sim_key()
keep = RegionGuard(8)
k.associate(keep)
doomed = RegionGuard(8)
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
"""
    )
    assert_survived(child)


def test_clearing_the_thread_state_dict_inside_a_guard_closes_the_number() -> None:
    """User code clears the thread's state dict inside a ReadWrite guard: the guard ends
    (its stack is dropped) and the key can be evicted, so the thread's bits for its number
    must be closed too, or the thread would reach the next owner's pages."""
    child = attack(
        _SIM
        + """
_core._pool_limit(M, 1)
a, b = sim_key(), sim_key()
ra, rb = RegionGuard(8), RegionGuard(8)
aa, ab = a.associate(ra), b.associate(rb)
g = aa.set_access_rights(RW)
g.__enter__()
n = a.hardware_key
assert bits(n) == 0
ctypes.pythonapi.PyThreadState_GetDict.restype = ctypes.py_object
ctypes.pythonapi.PyThreadState_GetDict().clear()
assert a._opening == 0 and a.active_guards == 0
assert bits(n) == 1, "the dropped guard left the number open on this thread"


def other():
    with ab.set_access_rights(RW):
        return b.hardware_key


assert run_on_thread(other) == n
assert bits(n) == 1, "this thread could reach b's pages"
"""
    )
    assert_survived(child)
