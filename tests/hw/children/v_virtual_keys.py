"""Child programs of ``tests/hw/test_virtual_keys.py`` (virtual keys on pku).

Each case runs in a fresh process: no other keys, no quarantined numbers, and a PKRU with
every key but 0 closed, so each thread's PKRU can be predicted whole.  A case reports on
stdout (``say``); a raw read that must fault kills the child through the fault probe, and
the parent asserts the line before it.
"""

from __future__ import annotations

import ctypes
import random
import threading
import time
from typing import Any

import pkeyguard
from pkeyguard import PkeyGuard, RegionGuard, Secret, _core
from tests.adversarial.childlib import NA, RO, RW, params
from tests.childhelpers import bits, probe, say, tag
from tests.support import pkey_at, secret_key

BITS = {NA: 1, RO: 2, RW: 0}
INIT = 0x55555554


def start() -> ctypes.CDLL:
    """The fault probe, installed; the backend checked."""
    lib = probe()
    assert pkeyguard.backend().name == "pku"
    return lib


def stats() -> dict[str, int]:
    return dict(_core._pool_stats(_core.MODE_PKU))


def case_thousand() -> None:
    start()
    before = stats()
    keys = [PkeyGuard() for _ in range(1000)]
    regions = [RegionGuard(ctypes.c_uint64) for _ in keys]
    assocs = [k.associate(r) for k, r in zip(keys, regions, strict=True)]
    assert len({k.key for k in keys}) == 1000, "logical ids are unique"
    for i, a in enumerate(assocs):
        with a.set_access_rights(RW) as g:
            g.mut_ref_guard().value = 0x5EC0000000 + i
    secrets = [Secret.from_bytes(bytearray(b"secret-%04d" % i)) for i in range(1000)]
    now = stats()
    assert now["logical"] == before["logical"] + 2000 and now["held"] <= 15, now
    for i in (*range(1000), *range(999, -1, -7)):
        with assocs[i].set_access_rights(RO) as r:
            assert r.ref_guard().value == 0x5EC0000000 + i
            number = keys[i].hardware_key
            assert number is not None
            assert bits(_core.rdpkru(), number) == 2  # ReadOnly, this thread
    for i in (*range(1000), *range(0, 1000, 13)):
        with secrets[i].reveal() as buf:
            assert bytes(buf) == b"secret-%04d" % i
    parked = sum(k.hardware_key is None for k in keys)
    assert parked >= 1000 - 15, "at most 15 numbers, so the rest are parked"
    for k, reg in zip(keys[:50], regions[:50], strict=True):  # parked pages: key 0
        assert pkey_at(reg.address) == (k.hardware_key or 0)
    say("THOUSAND", stats()["logical"], parked)
    for s in secrets:
        s.close()
    for k in keys:
        k.close()
    say("CLOSED", stats()["logical"])


def case_switches() -> None:
    lib = start()
    n_keys, n_threads = 24, 4
    switches = int(params()["switches"])
    keys = [PkeyGuard(name=f"k{i}") for i in range(n_keys)]
    regions = [RegionGuard(ctypes.c_uint64, name=f"r{i}") for i in range(n_keys)]
    assocs = [k.associate(r) for k, r in zip(keys, regions, strict=True)]
    owner = [i % n_threads for i in range(n_keys)]
    last = [i << 32 for i in range(n_keys)]  # each key's value: its index, then a count
    for i, a in enumerate(assocs):
        with a.set_access_rights(RW) as g:
            g.mut_ref_guard().value = last[i]
    errors: list[str] = []
    entries = [0] * n_threads

    def expected(stack: list[tuple[int, Any, Any]]) -> int:
        pkru = INIT
        for i, rights, _ in stack:  # outermost first: the innermost rules
            n = keys[i].hardware_key
            if n is not None:
                pkru = (pkru & ~(3 << (2 * n))) | (BITS[rights] << (2 * n))
        return pkru

    def worker(t: int) -> None:
        rng = random.Random(t)
        stack: list[tuple[int, Any, Any]] = []
        try:
            while entries[t] < switches // n_threads:
                if stack and (len(stack) >= 2 or rng.random() < 0.5):
                    stack.pop()[2].__exit__(None, None, None)
                    continue
                i = rng.randrange(n_keys)
                if any(j == i for j, _, _ in stack):
                    continue
                rights = rng.choice((RW, RO, RO, NA))
                if rights is RW and owner[i] != t:
                    rights = RO
                g: Any = assocs[i].set_access_rights(rights)
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

    began = time.monotonic()
    before = stats()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    after = stats()
    say("ERRORS", len(errors), *errors[:3])
    deltas = (
        f"{n}={after[n] - before[n]}" for n in ("hits", "misses", "evictions", "retags", "parks")
    )
    say("SWITCHES", sum(entries), f"{time.monotonic() - began:.1f}s", *deltas)
    for i, a in enumerate(assocs):  # every value as its owner left it
        with a.set_access_rights(RO) as r:
            assert r.ref_guard().value == last[i], (i, r.ref_guard().value, last[i])
    say("VALUES ok")
    # Inside a guard on key 0, a raw read of another key's region faults: PKUERR if that key
    # holds a number (closed in this thread), ACCERR if it is parked.
    with assocs[0].set_access_rights(RW):
        other = keys[1 + random.Random(7).randrange(n_keys - 1)]
        say("TARGET", other.hardware_key)
        lib.faultprobe_read(regions[keys.index(other)].address)
    say("NOT REACHED")


def case_raw_read_held_or_parked() -> None:
    lib = start()
    _core._pool_limit(_core.MODE_PKU, int(params()["limit"]))
    a, b, c = PkeyGuard(), PkeyGuard(), PkeyGuard()  # limit 2: c starts parked
    ra, rb, rc = (RegionGuard(ctypes.c_uint32) for _ in range(3))
    aa, _ab, ac = a.associate(ra), b.associate(rb), c.associate(rc)
    with aa.set_access_rights(RW):  # b is now the least recently entered
        pass
    with ac.set_access_rights(RW):  # limit 2: c takes b's number
        pass
    with aa.set_access_rights(RW):
        say("B", b.hardware_key)
        say("B-BITS", bits(_core.rdpkru(), b.hardware_key) if b.hardware_key else None)
        lib.faultprobe_read(rb.address)
    say("NOT REACHED")


def case_stale_thread() -> None:
    """Threads started inside x's ReadWrite guard; another thread gives x's number to y.
    ``params()["first_entry"]``: the reader enters a guard on another key before its raw
    read of y's pages."""
    lib = start()
    first_entry = bool(params()["first_entry"])
    _core._pool_limit(_core.MODE_PKU, 2)
    x, w, y = PkeyGuard(name="x"), PkeyGuard(name="w"), PkeyGuard(name="y")
    rx, ry, rw = (RegionGuard(ctypes.c_uint32) for _ in range(3))
    ax, ay, aw = x.associate(rx), y.associate(ry), w.associate(rw)
    assert y.hardware_key is None, "at the limit: y starts parked"
    go_check, go_read = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def checker() -> None:  # started inside x's ReadWrite guard: inherits x's number open
        go_check.wait(30)
        n = y.hardware_key
        assert n is not None
        seen["before"] = bits(_core.rdpkru(), n)
        with aw.set_access_rights(NA):  # its first entry: re-derives its rights
            seen["inside"] = bits(_core.rdpkru(), n)
        seen["after"] = bits(_core.rdpkru(), n)
        seen["level"] = y._thread_level()

    def reader() -> None:  # the same; reads y's pages raw (after its first entry if asked)
        go_read.wait(30)
        if first_entry:
            with aw.set_access_rights(NA):
                pass
        say("READ", hex(lib.faultprobe_read(ry.address)))
        say("NOT REACHED")

    with ax.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 1
        n = x.hardware_key
        assert n is not None
        say("X", n, "BITS-IN-GUARD", bits(_core.rdpkru(), n))
        stale = [threading.Thread(target=checker), threading.Thread(target=reader)]
        for t in stale:
            t.start()

    def evictor() -> None:  # another thread takes x's number for y (limit 2: w is not older)
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


def case_pinned_creator() -> None:
    """Thread C creates x ReadWrite (x's number open in C, outside any guard); the main
    thread closes x (closing it in the main thread only); thread M creates y ReadOnly with a
    region.  C then writes y's pages raw.  With ``params()["sync"]``, C first enters a guard
    on another key, which closes every closed pinned key's number in it, and y may take x's
    number."""
    lib = start()
    sync = bool(params()["sync"])
    w = PkeyGuard(name="w")
    rw = RegionGuard(ctypes.c_uint32)
    aw = w.associate(rw)
    x_made, closed, synced, y_made = (threading.Event() for _ in range(4))
    box: dict[str, Any] = {}

    def creator() -> None:
        x = PkeyGuard(RW, name="x")
        box["x"], box["n"] = x, x.hardware_key
        x_made.set()
        assert closed.wait(60)
        if sync:
            with aw.set_access_rights(NA):
                pass
        synced.set()
        assert y_made.wait(60)
        n, m = box["n"], box["y"].hardware_key
        assert n is not None and m is not None
        say("CREATOR", n, bits(_core.rdpkru(), n), m, bits(_core.rdpkru(), m))
        lib.faultprobe_write(box["ry"].address, 0x41)
        say("WROTE", hex(lib.faultprobe_read(box["ry"].address)))

    def maker() -> None:
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


def case_pinned_heir() -> None:
    """The main thread creates x ReadWrite and starts thread H (H copies its PKRU: x's
    number open), then closes x; thread M creates y ReadOnly with a region; H writes y's
    pages raw."""
    lib = start()
    x = PkeyGuard(RW, name="x")
    n = x.hardware_key
    assert n is not None
    started, y_made = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def heir() -> None:
        started.set()
        assert y_made.wait(60)
        m = box["y"].hardware_key
        say("HEIR", n, bits(_core.rdpkru(), n), m, bits(_core.rdpkru(), m))
        lib.faultprobe_write(box["ry"].address, 0x41)
        say("WROTE", hex(lib.faultprobe_read(box["ry"].address)))

    def maker() -> None:
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


def case_denied_under_eviction() -> None:
    lib = start()
    _core._pool_limit(_core.MODE_PKU, 3)
    x = PkeyGuard(name="x")
    rx = RegionGuard(ctypes.c_uint32)
    ax = x.associate(rx)
    others = [PkeyGuard() for _ in range(8)]
    oregions = [RegionGuard(ctypes.c_uint32) for _ in others]
    oassocs = [k.associate(r) for k, r in zip(others, oregions, strict=True)]
    a_inside, c_done, b_go = threading.Event(), threading.Event(), threading.Event()
    log: list[tuple[object, ...]] = []

    def thread_a() -> None:  # inside ReadWrite on x for the whole test
        with ax.set_access_rights(RW) as g:
            view = g.mut_ref_guard()
            view.value = 7
            n = x.hardware_key
            assert n is not None
            log.append(("A", n, bits(_core.rdpkru(), n)))
            a_inside.set()
            c_done.wait(60)
            view.value += 1  # still works after all the evictions around it
            n = x.hardware_key
            assert n is not None
            log.append(("A-after", view.value, bits(_core.rdpkru(), n)))
            b_go.set()
            time.sleep(60)  # B's read ends the process while this guard is active

    def thread_c() -> None:  # evicts and re-tags the other keys, never x
        a_inside.wait(60)
        n = x.hardware_key
        rng = random.Random(3)
        for round_ in range(300):
            i = rng.randrange(len(others))
            with oassocs[i].set_access_rights(RW) as g:
                g.mut_ref_guard().value = round_
            if x.hardware_key != n:
                log.append(("C", "x lost its number", round_))
                break
        log.append(("C-tag", x.hardware_key, tag(rx.address)))
        c_done.set()

    before = stats()
    ta = threading.Thread(target=thread_a, daemon=True)
    tc = threading.Thread(target=thread_c)
    ta.start()
    tc.start()
    tc.join()
    b_go.wait(60)
    after = stats()
    say("LOG", *[" ".join(map(str, e)) for e in log])
    delta = {n: after[n] - before[n] for n in ("evictions", "retags")}
    say("EVICTIONS", delta["evictions"], "RETAGS", delta["retags"])
    n = x.hardware_key
    assert n is not None
    say("X", n)
    # B: this thread, never in a guard on x.  Its rights through x: none.
    say("B", x.current_rights().name, x._thread_level(), bits(_core.rdpkru(), n))
    lib.faultprobe_read(rx.address)
    say("NOT REACHED")


def case_two_secrets() -> None:
    lib = start()
    a = Secret.from_bytes(bytearray(b"alpha-secret"))
    b = Secret.from_bytes(bytearray(b"bravo-secret"))
    ka, kb = secret_key(a), secret_key(b)
    say("DISTINCT", ka is not kb and ka.key != kb.key)
    with a.reveal() as buf:
        say("A", bytes(buf).decode())
        n = kb.hardware_key
        say("B", n, bits(_core.rdpkru(), n) if n is not None else None, kb._thread_level())
        lib.faultprobe_read(b.address)
    say("NOT REACHED")


def case_state_machine() -> None:
    """The pool's state machine on pku, ``params()["examples"]`` examples."""
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests.hw.test_virtual_keys import PkuVirtualKeysMachine

    n = int(params()["examples"])
    began = time.monotonic()
    run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
        PkuVirtualKeysMachine,
        settings=settings(
            max_examples=n,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck.__members__.values()),
        ),
    )
    say("MACHINE", n, f"{time.monotonic() - began:.1f}s")
