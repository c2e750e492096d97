"""Virtual keys (issue 11) on real (emulated) PKU: the invariants, each proved by the CPU.

Most tests run in a child process: a fresh process holds no other keys, no quarantined
numbers and a PKRU with every key but 0 closed, so each thread's PKRU can be predicted
whole; and the raw reads that must fault kill only the child.  A fault counts only where
it is asserted: the child's stderr must show ``FAULT signo=11 code=4`` (``SEGV_PKUERR``, the
key's number) or ``code=2`` (``SEGV_ACCERR``: the pages were parked, ``PROT_NONE``), and the
line before it says which was expected.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any, Final

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, Secret, _core
from tests.profiles import vk_state_examples
from tests.support import Child, pkey_at, run_child, secret_key
from tests.unit.test_state_machine import lookup, smaps_pkeys
from tests.unit.test_virtual_keys import VirtualKeysMachine, bits_of

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess

SEGV_ACCERR, SEGV_PKUERR = 2, 4

# What every child starts with: the fault reporter, and the names the bodies use.
PRELUDE = """
import ctypes, os, random, sys, threading, time
probe = ctypes.CDLL(os.environ["FAULTPROBE"])
assert probe.faultprobe_install() == 0
probe.faultprobe_read.argtypes = [ctypes.c_void_p]
probe.faultprobe_read.restype = ctypes.c_int
import pkeyguard
from pkeyguard import *
from pkeyguard import _core
assert pkeyguard.backend().name == "pku"
RW, RO, NA = PkeyPermissions.ReadWrite, PkeyPermissions.ReadOnly, PkeyPermissions.NoAccess
BITS = {NA: 1, RO: 2, RW: 0}
INIT = 0x55555554
def stats():
    return dict(_core._pool_stats(_core.MODE_PKU))
def say(*words):
    print(*words, flush=True)
def bits(pkru, number):
    return (pkru >> (2 * number)) & 3
def tag(address):  # the ProtectionKey of the mapping holding address (smaps)
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(v, 16) for v in head[0].split("-"))
            inside = lo <= address < hi
        elif inside and head[:1] == ["ProtectionKey:"]:
            return int(head[1])
"""


def run(body: str, faultprobe_path: str, timeout: float = 300, **env: str) -> Child:
    env = {"FAULTPROBE": faultprobe_path, "PKEYGUARD_BACKEND": "pku", **env}
    return run_child(PRELUDE + body, env=env, timeout=timeout)


def assert_faulted(child: Child, *, number: int | None) -> int:
    """The child died of SIGSEGV at the asserted read: ``SEGV_PKUERR`` with the key's number,
    or, where ``number`` is None (the pages were parked), ``SEGV_ACCERR``.  Returns the code."""
    assert child.returncode == -signal.SIGSEGV, child
    assert "NOT REACHED" not in child.stdout, child
    m = re.search(r"FAULT signo=(\d+) code=(\d+) pkey=(-?\d+)", child.stderr)
    assert m, child
    code, pkey = int(m.group(2)), int(m.group(3))
    if number is None:
        assert (code, pkey) == (SEGV_ACCERR, -1), f"expected a parked page (ACCERR): {child}"
    else:
        assert (code, pkey) == (SEGV_PKUERR, number), f"expected PKUERR, key {number}: {child}"
    return code


def said(child: Child, word: str) -> list[str]:
    """The words after ``word`` on the child's stdout line that starts with it."""
    for line in child.stdout.splitlines():
        if line.split()[:1] == [word]:
            return line.split()[1:]
    raise AssertionError(f"no {word!r} line: {child}")


THOUSAND_BODY = """
from tests.support import pkey_at
start = stats()
keys = [PkeyGuard() for _ in range(1000)]
regions = [RegionGuard(ctypes.c_uint64) for _ in keys]
assocs = [k.associate(r) for k, r in zip(keys, regions)]
assert len({k.key for k in keys}) == 1000, "logical ids are unique"
for i, a in enumerate(assocs):
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 0x5EC0000000 + i
secrets = [Secret.from_bytes(bytearray(b"secret-%04d" % i)) for i in range(1000)]
now = stats()
assert now["logical"] == start["logical"] + 2000 and now["held"] <= 15, now
for i in (*range(1000), *range(999, -1, -7)):
    with assocs[i].set_access_rights(RO) as r:
        assert r.ref_guard().value == 0x5EC0000000 + i
        assert bits(_core.rdpkru(), keys[i].hardware_key) == 2  # ReadOnly, this thread
for i in (*range(1000), *range(0, 1000, 13)):
    with secrets[i].reveal() as buf:
        assert bytes(buf) == b"secret-%04d" % i
parked = sum(k.hardware_key is None for k in keys)
assert parked >= 1000 - 15, "at most 15 numbers, so the rest are parked"
for k, r in zip(keys[:50], regions[:50]):  # parked pages: key 0
    assert pkey_at(r.address) == (k.hardware_key or 0)
say("THOUSAND", stats()["logical"], parked)
for s in secrets:
    s.close()
for k in keys:
    k.close()
say("CLOSED", stats()["logical"])
"""


def test_a_thousand_keys_and_a_thousand_secrets_coexist(faultprobe_path: str) -> None:
    """Issue 11's first "done when": no limit but memory; each one usable, values intact.
    In a child: afterwards the pool holds 15 numbers for NoAccess keys for good (it never
    frees one), and keys with initial rights could not be made in this process any more."""
    child = run(THOUSAND_BODY, faultprobe_path, timeout=600)
    assert child.returncode == 0, child
    assert said(child, "THOUSAND")[0] == "2000", child
    assert said(child, "CLOSED") == ["0"], child


SWITCHES_BODY = """
N_KEYS, THREADS = 24, 4
SWITCHES = int(os.environ["SWITCHES"])
keys = [PkeyGuard(name=f"k{i}") for i in range(N_KEYS)]
regions = [RegionGuard(ctypes.c_uint64, name=f"r{i}") for i in range(N_KEYS)]
assocs = [k.associate(r) for k, r in zip(keys, regions)]
owner = [i % THREADS for i in range(N_KEYS)]
last = [i << 32 for i in range(N_KEYS)]  # each key's value: its index, then a count
for i, a in enumerate(assocs):
    with a.set_access_rights(RW) as g:
        g.mut_ref_guard().value = last[i]
errors = []
entries = [0] * THREADS

def expected(stack):
    pkru = INIT
    for i, rights, _ in stack:  # outermost first: the innermost rules
        n = keys[i].hardware_key
        if n is not None:
            pkru = (pkru & ~(3 << (2 * n))) | (BITS[rights] << (2 * n))
    return pkru

def worker(t):
    rng = random.Random(t)
    stack = []
    try:
        while entries[t] < SWITCHES // THREADS:
            if stack and (len(stack) >= 2 or rng.random() < 0.5):
                stack.pop()[2].__exit__(None, None, None)
                continue
            i = rng.randrange(N_KEYS)
            if any(j == i for j, _, _ in stack):
                continue
            rights = rng.choice((RW, RO, RO, NA))
            if rights is RW and owner[i] != t:
                rights = RO
            g = assocs[i].set_access_rights(rights)
            g.__enter__()
            stack.append((i, rights, g))
            entries[t] += 1
            pkru, want = _core.rdpkru(), expected(stack)
            if pkru != want:
                errors.append(f"thread {t}: PKRU {pkru:#x}, its guards open {want:#x}")
                return
            if rights is NA:
                continue
            value = g.ref_guard().value
            if value >> 32 != i or (owner[i] == t and value != last[i]):
                errors.append(f"thread {t}: key {i} reads {value:#x}, last {last[i]:#x}")
                return
            if rights is RW:
                last[i] += 1
                g.mut_ref_guard().value = last[i]
    except BaseException as exc:
        errors.append(f"thread {t}: {exc!r}")
    finally:
        while stack:
            stack.pop()[2].__exit__(None, None, None)

start = time.monotonic()
before = stats()
threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
for th in threads:
    th.start()
for th in threads:
    th.join()
after = stats()
say("ERRORS", len(errors), *errors[:3])
say("SWITCHES", sum(entries), f"{time.monotonic() - start:.1f}s",
    *(f"{n}={after[n] - before[n]}" for n in ("hits", "misses", "evictions", "retags", "parks")))
for i, a in enumerate(assocs):  # every value as its owner left it
    with a.set_access_rights(RO) as g:
        assert g.ref_guard().value == last[i], (i, g.ref_guard().value, last[i])
say("VALUES ok")
# Inside a guard on key 0, a raw read of another key's region faults: PKUERR if that key
# holds a number (closed in this thread), ACCERR if it is parked.
with assocs[0].set_access_rights(RW):
    other = keys[1 + random.Random(7).randrange(N_KEYS - 1)]
    say("TARGET", other.hardware_key)
    probe.faultprobe_read(regions[keys.index(other)].address)
say("NOT REACHED")
"""


def test_random_switches_on_four_threads_keep_each_threads_rights(faultprobe_path: str) -> None:
    """≥100,000 guard entries over 24 keys on 4 threads: after each entry, the thread's PKRU
    opens exactly its own active guards' (current) numbers; every owner reads back what it
    wrote; and at the end a raw read of another key's region faults."""
    switches = int(os.environ.get("PKEYGUARD_VK_SWITCHES", "100000"))
    child = run(SWITCHES_BODY, faultprobe_path, timeout=900, SWITCHES=str(switches))
    env_switches = said(child, "SWITCHES")
    assert said(child, "ERRORS") == ["0"], child
    assert int(env_switches[0]) >= switches, child
    counts = dict(word.split("=") for word in env_switches[2:])
    assert int(counts["evictions"]) > 1000 and int(counts["misses"]) > 1000, counts
    assert said(child, "VALUES") == ["ok"], child
    target = said(child, "TARGET")[0]
    assert_faulted(child, number=None if target == "None" else int(target))
    print(f"random switches: {' '.join(env_switches)}")


def test_raw_read_of_another_keys_region_faults_held_and_parked(faultprobe_path: str) -> None:
    """Both ways a closed key's pages are closed: its number closed in this thread's PKRU
    (SEGV_PKUERR), or parked (PROT_NONE: SEGV_ACCERR)."""
    body = """
_core._pool_limit(_core.MODE_PKU, int(os.environ["LIMIT"]))
a, b, c = PkeyGuard(), PkeyGuard(), PkeyGuard()  # limit 2: c starts parked
ra, rb, rc = (RegionGuard(ctypes.c_uint32) for _ in range(3))
aa, ab, ac = a.associate(ra), b.associate(rb), c.associate(rc)
with aa.set_access_rights(RW):  # b is now the least recently entered
    pass
with ac.set_access_rights(RW):  # limit 2: c takes b's number
    pass
with aa.set_access_rights(RW):
    say("B", b.hardware_key)
    say("B-BITS", bits(_core.rdpkru(), b.hardware_key) if b.hardware_key else None)
    probe.faultprobe_read(rb.address)
say("NOT REACHED")
"""
    env = {"FAULTPROBE": faultprobe_path, "PKEYGUARD_BACKEND": "pku"}
    held = run_child(PRELUDE + body, env={**env, "LIMIT": "15"})
    number = int(said(held, "B")[0])
    assert said(held, "B-BITS") == ["1"], held
    assert_faulted(held, number=number)
    parked = run_child(PRELUDE + body, env={**env, "LIMIT": "2"})
    assert said(parked, "B") == ["None"], parked
    assert_faulted(parked, number=None)


STALE_BODY = """
_core._pool_limit(_core.MODE_PKU, 2)
x, w, y = PkeyGuard(name="x"), PkeyGuard(name="w"), PkeyGuard(name="y")
rx, ry, rw = (RegionGuard(ctypes.c_uint32) for _ in range(3))
ax, ay, aw = x.associate(rx), y.associate(ry), w.associate(rw)
assert y.hardware_key is None, "at the limit: y starts parked"
go_check, go_read = threading.Event(), threading.Event()
seen = {}

def checker():  # started inside x's ReadWrite guard: inherits x's number open
    go_check.wait(30)
    n = y.hardware_key
    seen["before"] = bits(_core.rdpkru(), n)
    with aw.set_access_rights(NA):  # its first entry: re-derives its rights
        seen["inside"] = bits(_core.rdpkru(), n)
    seen["after"] = bits(_core.rdpkru(), n)
    seen["level"] = y._thread_level()

def reader():  # the same; reads y's pages raw (after its first entry where asked to)
    go_read.wait(30)
    #FIRST-ENTRY with aw.set_access_rights(NA): pass
    say("READ", hex(probe.faultprobe_read(ry.address)))
    say("NOT REACHED")

with ax.set_access_rights(RW) as g:
    g.mut_ref_guard().value = 1
    n = x.hardware_key
    say("X", n, "BITS-IN-GUARD", bits(_core.rdpkru(), n))
    stale = [threading.Thread(target=checker), threading.Thread(target=reader)]
    for t in stale:
        t.start()

def evictor():  # another thread takes x's number for y (limit 2: w is not older)
    with aw.set_access_rights(RO):
        pass
    with ay.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 0xC0FFEE

th = threading.Thread(target=evictor)
th.start()
th.join()
say("Y", y.hardware_key, "X", x.hardware_key, "REUSED", y.hardware_key == n)
go_check.set()
stale[0].join(30)
say("CHECKER", seen["before"], seen["inside"], seen["after"], seen["level"])
go_read.set()
stale[1].join(30)
say("NOT REACHED")
"""


def test_a_reused_number_never_reaches_another_keys_pages(faultprobe_path: str) -> None:
    """Issue 11's second invariant, as far as user space can hold it.  Threads started inside
    x's ReadWrite guard inherit its number open (the CPU copies PKRU at thread creation;
    pkey_alloc/pkey_free and WRPKRU change only the calling thread).  Another thread then
    evicts x and gives its number to y.  A stale thread's first guard entry closes the stale
    bits, after which its raw read of y's pages faults."""
    child = run(STALE_BODY.replace("#FIRST-ENTRY ", ""), faultprobe_path)
    x_line = said(child, "X")
    n = int(x_line[0])
    assert x_line[1:] == ["BITS-IN-GUARD", "0"], child
    assert said(child, "Y") == [str(n), "X", "None", "REUSED", "True"], child
    # Inherited open (0) before; closed (1) from its first entry on, under a NoAccess guard
    # on another key; and its rights through y are none.
    assert said(child, "CHECKER") == ["0", "1", "1", "0"], child
    assert "READ" not in child.stdout, f"a stale thread read y's pages: {child}"
    assert_faulted(child, number=n)


def test_a_thread_started_inside_a_guard_reaches_a_reused_number_until_its_first_entry(
    faultprobe_path: str,
) -> None:
    """The limit of the lazy sync, documented in the README ("Virtual keys"): a thread that
    inherited x's number open and never enters a pkeyguard guard keeps it open, so once the
    number has passed to y it can read y's pages raw.  No process can write another thread's
    PKRU; closing the number in every thread at reuse would take a kernel change (libmpk used
    a kernel module).  If this read ever faults, the docs can promise more."""
    child = run(STALE_BODY, faultprobe_path)
    n = int(said(child, "X")[0])
    assert said(child, "Y") == [str(n), "X", "None", "REUSED", "True"], child
    assert said(child, "READ") == [hex(0xC0FFEE)], child


# -- class 8 of issue 18: numbers of keys created with initial rights ----------------------

# Thread C creates x ReadWrite (x's number open in C, outside any guard); the main thread
# closes x (closing it in the main thread only); thread M creates y ReadOnly with a region.
# C then writes y's pages raw.  With #SYNC, C first enters a guard on another key, which
# closes every closed pinned key's number in it, and y may take x's number.
PINNED_CREATOR_BODY = """
probe.faultprobe_write.argtypes = [ctypes.c_void_p, ctypes.c_int]
w = PkeyGuard(name="w")
rw = RegionGuard(ctypes.c_uint32)
aw = w.associate(rw)
x_made, closed, synced, y_made = (threading.Event() for _ in range(4))
box = {}

def creator():
    x = PkeyGuard(RW, name="x")
    box["x"], box["n"] = x, x.hardware_key
    x_made.set()
    assert closed.wait(60)
    #SYNC with aw.set_access_rights(NA): pass
    synced.set()
    assert y_made.wait(60)
    n, m = box["n"], box["y"].hardware_key
    say("CREATOR", n, bits(_core.rdpkru(), n), m, bits(_core.rdpkru(), m))
    probe.faultprobe_write(box["ry"].address, 0x41)
    say("WROTE", hex(probe.faultprobe_read(box["ry"].address)))

def maker():
    y = PkeyGuard(RO, name="y")
    ry = RegionGuard(ctypes.c_uint32)
    box["y"], box["ry"], box["ay"] = y, ry, y.associate(ry)

c = threading.Thread(target=creator)
c.start()
assert x_made.wait(60)
box["x"].close()
closed.set()
assert synced.wait(60)
m = threading.Thread(target=maker)
m.start()
m.join()
say("Y", box["y"].hardware_key, "REUSED", box["y"].hardware_key == box["n"])
y_made.set()
c.join(60)
say("NOT REACHED")
"""

# The main thread creates x ReadWrite and starts thread H (H copies its PKRU: x's number
# open), then closes x; thread M creates y ReadOnly with a region; H writes y's pages raw.
PINNED_HEIR_BODY = """
probe.faultprobe_write.argtypes = [ctypes.c_void_p, ctypes.c_int]
x = PkeyGuard(RW, name="x")
n = x.hardware_key
started, y_made = threading.Event(), threading.Event()
box = {}

def heir():
    started.set()
    assert y_made.wait(60)
    m = box["y"].hardware_key
    say("HEIR", n, bits(_core.rdpkru(), n), m, bits(_core.rdpkru(), m))
    probe.faultprobe_write(box["ry"].address, 0x41)
    say("WROTE", hex(probe.faultprobe_read(box["ry"].address)))

def maker():
    y = PkeyGuard(RO, name="y")
    ry = RegionGuard(ctypes.c_uint32)
    box["y"], box["ry"], box["ay"] = y, ry, y.associate(ry)

h = threading.Thread(target=heir)
h.start()
assert started.wait(60)
x.close()
m = threading.Thread(target=maker)
m.start()
m.join()
say("Y", box["y"].hardware_key, "REUSED", box["y"].hardware_key == n)
y_made.set()
h.join(60)
say("NOT REACHED")
"""


def test_the_creator_of_a_closed_pinned_key_cannot_write_a_later_keys_pages(
    faultprobe_path: str,
) -> None:
    """Class 8 of issue 18, the creator as the attacker: after another thread closed x, C
    still has x's number open (the CPU's PKRU is per thread); y, made ReadOnly by a third
    thread, must not be writable by C: C's raw write faults on y's number."""
    child = run(PINNED_CREATOR_BODY, faultprobe_path)
    words = said(child, "CREATOR")
    n, m = int(words[0]), int(words[2])
    assert words[1] == "0", f"the attack: C should still hold x's number open: {child}"
    assert said(child, "Y") == [str(m), "REUSED", "False"], child
    assert "WROTE" not in child.stdout, f"C wrote y's pages: {child}"
    assert m != n and words[3] == "1", child
    assert_faulted(child, number=m)


def test_a_thread_started_while_a_pinned_key_was_open_cannot_write_a_later_keys_pages(
    faultprobe_path: str,
) -> None:
    """The same with a thread that inherited x's rights when it started (the creator itself
    closed x, which closes the number in the creator only)."""
    child = run(PINNED_HEIR_BODY, faultprobe_path)
    words = said(child, "HEIR")
    n, m = int(words[0]), int(words[2])
    assert words[1] == "0", f"the attack: H should still hold x's number open: {child}"
    assert "WROTE" not in child.stdout, f"H wrote y's pages: {child}"
    assert m != n and words[3] == "1", child
    assert_faulted(child, number=m)


def test_a_closed_pinned_keys_number_is_reused_once_its_creator_entered_a_guard(
    faultprobe_path: str,
) -> None:
    """What the wait costs, and that it ends: once C entered a guard after the close (its
    sync closed x's number in it), y takes x's number, and C's raw write faults on it."""
    child = run(PINNED_CREATOR_BODY.replace("#SYNC ", ""), faultprobe_path)
    words = said(child, "CREATOR")
    n = int(words[0])
    assert said(child, "Y") == [str(n), "REUSED", "True"], child
    assert words == [str(n), "1", str(n), "1"], child
    assert "WROTE" not in child.stdout, f"C wrote y's pages: {child}"
    assert_faulted(child, number=n)


DENIED_BODY = """
_core._pool_limit(_core.MODE_PKU, 3)
x = PkeyGuard(name="x")
rx = RegionGuard(ctypes.c_uint32)
ax = x.associate(rx)
others = [PkeyGuard() for _ in range(8)]
oregions = [RegionGuard(ctypes.c_uint32) for _ in others]
oassocs = [k.associate(r) for k, r in zip(others, oregions)]
a_inside, c_done, b_go = threading.Event(), threading.Event(), threading.Event()
log = []

def a():  # inside ReadWrite on x for the whole test
    with ax.set_access_rights(RW) as g:
        view = g.mut_ref_guard()
        view.value = 7
        log.append(("A", x.hardware_key, bits(_core.rdpkru(), x.hardware_key)))
        a_inside.set()
        c_done.wait(60)
        view.value += 1  # still works after all the evictions around it
        log.append(("A-after", view.value, bits(_core.rdpkru(), x.hardware_key)))
        b_go.set()
        time.sleep(60)  # B's read ends the process while this guard is active

def c():  # evicts and re-tags the other keys, never x
    a_inside.wait(60)
    n = x.hardware_key
    rng = random.Random(3)
    for round in range(300):
        i = rng.randrange(len(others))
        with oassocs[i].set_access_rights(RW) as g:
            g.mut_ref_guard().value = round
        if x.hardware_key != n:
            log.append(("C", "x lost its number", round))
            break
    log.append(("C-tag", x.hardware_key, tag(rx.address)))
    c_done.set()

before = stats()
ta, tc = threading.Thread(target=a, daemon=True), threading.Thread(target=c)
ta.start()
tc.start()
tc.join()
b_go.wait(60)
after = stats()
say("LOG", *[" ".join(map(str, e)) for e in log])
delta = {n: after[n] - before[n] for n in ("evictions", "retags")}
say("EVICTIONS", delta["evictions"], "RETAGS", delta["retags"])
n = x.hardware_key
say("X", n)
# B: this thread, never in a guard on x.  Its rights through x: none.
say("B", x.current_rights().name, x._thread_level(), bits(_core.rdpkru(), n))
probe.faultprobe_read(rx.address)
say("NOT REACHED")
"""


def test_per_thread_rights_hold_under_eviction_from_a_third_thread(faultprobe_path: str) -> None:
    """Thread A inside ReadWrite on x; thread C forces hundreds of evictions and re-tags of
    other keys meanwhile (x keeps its number); thread B is denied: a raw read faults."""
    child = run(DENIED_BODY, faultprobe_path)
    n = int(said(child, "X")[0])
    log = " ".join(said(child, "LOG"))
    assert f"A {n} 0" in log and "A-after 8 0" in log and "lost" not in log, child
    assert f"C-tag {n} {n}" in log, child  # x's pages kept their tag throughout
    evictions = said(child, "EVICTIONS")
    assert int(evictions[0]) >= 100 and int(evictions[2]) >= 100, child
    assert said(child, "B") == ["NoAccess", "0", "1"], child
    assert_faulted(child, number=n)


SECRETS_BODY = """
a = Secret.from_bytes(bytearray(b"alpha-secret"))
b = Secret.from_bytes(bytearray(b"bravo-secret"))
from tests.support import secret_key
ka, kb = secret_key(a), secret_key(b)
say("DISTINCT", ka is not kb and ka.key != kb.key)
with a.reveal() as buf:
    say("A", bytes(buf).decode())
    n = kb.hardware_key
    say("B", n, bits(_core.rdpkru(), n) if n is not None else None, kb._thread_level())
    probe.faultprobe_read(b.address)
say("NOT REACHED")
"""


def test_revealing_one_secret_leaves_another_closed(faultprobe_path: str) -> None:
    """Issue 11, part 3: one key per Secret.  Inside ``a.reveal()`` a raw read of secret b
    faults (b's number closed in this thread, or b parked)."""
    child = run(SECRETS_BODY, faultprobe_path)
    assert said(child, "DISTINCT") == ["True"], child
    assert said(child, "A") == ["alpha-secret"], child
    b = said(child, "B")
    if b[0] == "None":
        assert b[1:] == ["None", "0"], child
        assert_faulted(child, number=None)
    else:
        assert b[1:] == ["1", "0"], child
        assert_faulted(child, number=int(b[0]))


def test_revealing_one_secret_in_process() -> None:
    """The same without a crash: inside a.reveal(), b's key gives this thread nothing."""
    a = Secret.from_bytes(bytearray(b"alpha"))
    b = Secret.from_bytes(bytearray(b"bravo"))
    try:
        kb: Any = secret_key(b)
        with a.reveal() as buf:
            assert bytes(buf) == b"alpha"
            assert kb._thread_level() == 0
            n = kb.hardware_key
            if n is not None:
                assert bits_of(_core.rdpkru(), n) == 1
                assert pkey_at(b.address) == n
            else:
                assert pkey_at(b.address) == 0
    finally:
        a.close()
        b.close()


# -- the state machine of tests/unit/test_virtual_keys.py, on pku --------------------------


class PkuVirtualKeysMachine(VirtualKeysMachine):
    """Same rules and invariants on pku: the PKRU register compared whole on each thread,
    raw accesses only where page rights *and* PKRU allow them (a wrong model is a fault),
    and every region's key tag from smaps (its number while held; 0 parked or untagged)."""

    MODE = _core.MODE_PKU
    ENFORCED = True

    def __init__(self) -> None:
        assert pkeyguard.backend().name == "pku"  # chosen (RDPKRU enabled) before any read
        super().__init__()

    MAPS_EVERY_STEP = False  # the guest is slow: maps after steps that change page rights,
    TAGS_EVERY = 4  # and smaps (the slowest: page walks) every 4th such step and at the end

    @staticmethod
    def make_key(rights: PkeyPermissions) -> PkeyGuard:
        return PkeyGuard(rights)

    @staticmethod
    def read_pkru() -> int:
        return _core.rdpkru()

    def new_thread_pkru(self) -> int:
        return self.pkru(0)  # a new thread copies its creator's PKRU

    def check_tags(self) -> None:
        tags = smaps_pkeys()
        for r in self.live_regions():
            want = r.key.number if r.key is not None and r.key.number is not None else 0
            got = lookup(tags, r.address)
            assert got == want, f"{r!r}: smaps says key {got}, model {want}"


MACHINE_CHILD = """
import os
os.environ["PKEYGUARD_BACKEND"] = "pku"
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from tests.hw.test_virtual_keys import PkuVirtualKeysMachine
import time
n = int(os.environ["EXAMPLES"])
start = time.monotonic()
run_state_machine_as_test(
    PkuVirtualKeysMachine,
    settings=settings(
        max_examples=n,
        stateful_step_count=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    ),
)
print("MACHINE", n, f"{time.monotonic() - start:.1f}s", flush=True)
"""


def test_state_machine_on_pku() -> None:
    """The pool's state machine on the pku backend (≥200 examples in CI), in a fresh process
    (no other keys, no quarantine, the initial PKRU)."""
    examples = vk_state_examples(guest=True)
    child = run_child(
        MACHINE_CHILD,
        env={"PKEYGUARD_BACKEND": "pku", "EXAMPLES": str(examples)},
        timeout=1500,
    )
    assert child.returncode == 0, child
    words = said(child, "MACHINE")
    assert words[0] == str(examples), child
    print(f"state machine on pku: {' '.join(words)}")
