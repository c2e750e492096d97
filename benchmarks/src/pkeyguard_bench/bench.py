"""``python -m pkeyguard_bench``: what a rights switch costs, against floors from the same run.

Every figure is measured interleaved with the others in one process: each round takes one
timed sample of every case, in a fresh shuffled order (cases that work on the same memory
stay together, after one untimed warm-up iteration), and the table reports the median and
the minimum over the rounds.  A sample is a timeit-style tight loop calibrated to a target
duration; the cost of an empty loop iteration is measured the same way and subtracted
("net").  Native floors (a raw
``mprotect`` pair, RDPKRU/WRPKRU) loop and time themselves in C (``_floor``), so they
carry no interpreter cost at all.

Each row is divided by its floor from the same run:

* a switch pair (``with guard:``) by the hardware operation it wraps: a raw C ``mprotect``
  pair on the same pages (mprotect backend) or the RDPKRU/WRPKRU pair a guard executes (pku);
* the framework overhead (switch minus hardware) by an empty C context manager of the same
  shape (a guard on a ``MODE_NOP`` key: the same bookkeeping, no hardware operation);
* what a user would write instead (ctypes ``mprotect``, glibc ``pkey_set``) by the same floor;
* view reads/writes by typed ``memoryview`` element access, bulk copies by a plain copy.

The 2-thread rows run while a second thread of this process writes its own memory from C
without the GIL (so ``mprotect`` pays for TLB shootdowns); the main thread and the writer
are pinned to different CPUs when two are available.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import itertools
import json
import mmap
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from pkeyguard import (
    AccessPermissions,
    AssociatedRegion,
    PkeyGuard,
    PkeyPermissions,
    RegionGuard,
    WriteGuard,
    _core,
)
from pkeyguard import backend as active_backend

from . import _floor

__all__ = ["main", "run"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: A timed loop: runs ``n`` iterations and returns the elapsed nanoseconds.
Runner = Callable[[int], int]

_BUSY_BYTES = 16 * MiB
_GIB_HEADROOM = 1 * GiB  # MemAvailable needed beyond the 1 GiB region itself


@dataclass(frozen=True)
class Mode:
    name: str
    sizes: tuple[int, ...]
    rounds: int
    sample_s: float  # target duration of one sample
    bulk_bytes: int
    budget_s: float  # no new round starts that would end past this (at least 3 rounds run)


MODES = {
    "quick": Mode(
        "quick",
        (4 * KiB, 1 * MiB, 64 * MiB),
        rounds=7,
        sample_s=0.003,
        bulk_bytes=64 * MiB,
        budget_s=8.0,
    ),
    "default": Mode(
        "default",
        (4 * KiB, 1 * MiB, 64 * MiB, 1 * GiB),
        rounds=15,
        sample_s=0.02,
        bulk_bytes=64 * MiB,
        budget_s=50.0,
    ),
}
_MIN_ROUNDS = 3


def size_label(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


@dataclass
class Case:
    """One measured row."""

    id: str
    label: str
    group: str
    threads: int
    size: int | None
    floor: str | None  # id of the row this one is divided by
    native: bool  # timed inside C: no interpreter loop to subtract
    run: Runner = field(repr=False)
    iterations: int = 0
    samples: list[float] = field(default_factory=list)  # ns per iteration, one per round


def case_id(slug: str, threads: int, size: int | None = None) -> str:
    where = f"@{size_label(size).replace(' ', '')}" if size is not None else ""
    return f"{slug}{where}/{threads}t"


# -- timed loops ------------------------------------------------------------------------


def py_loop(
    stmt: str,
    names: Mapping[str, object],
    *,
    enter: str | None = None,
    pre: str = "",
    post: str = "",
) -> Runner:
    """A timeit-style loop over ``stmt`` with ``names`` as fast locals.

    ``enter`` names a context manager held around the timed loop (for view access, which
    needs an active guard); ``pre``/``post`` run inside it before and after the loop.
    """
    params = "".join(f", {name}" for name in names)
    inner = [
        pre,
        "_it = _repeat(None, _n)",
        "_t0 = _clock()",
        "for _ in _it:",
        f"    {stmt}",
        "_t1 = _clock()",
        post,
    ]
    lines = [f"def _bench(_n, _clock{params}):"]
    if enter is not None:
        lines.append(f"    with {enter}:")
        lines += [f"        {line}" for line in inner if line]
    else:
        lines += [f"    {line}" for line in inner if line]
    lines.append("    return _t1 - _t0")
    namespace: dict[str, Any] = {"_repeat": itertools.repeat}
    exec(compile("\n".join(lines), f"<bench: {stmt}>", "exec"), namespace)
    fn: Callable[..., int] = namespace["_bench"]
    values = tuple(names.values())
    clock = time.perf_counter_ns

    def run(n: int) -> int:
        return fn(n, clock, *values)

    return run


def calibrate(run: Runner, target_ns: float) -> int:
    """Iterations for one sample of about ``target_ns`` (at least 1)."""
    n = 1
    elapsed = run(n)
    while elapsed < target_ns / 10 and n < 1 << 32:
        n *= 10
        elapsed = run(n)
    return max(1, round(n * target_ns / max(elapsed, 1)))


# -- the machine ------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def cpuinfo() -> tuple[str, set[str]]:
    """The first ``model name`` and ``flags`` of /proc/cpuinfo."""
    model, flags = "unknown", set[str]()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and model == "unknown":
            model = value.strip()
        elif name == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def mem_available() -> int | None:
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * KiB
    return None


def machine_info() -> dict[str, Any]:
    model, flags = cpuinfo()
    pku, ospke = _floor.cpuid_flags()
    info = active_backend()
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "cpu_model": model,
        "cpuinfo_flags": {"pku": "pku" in flags, "ospke": "ospke" in flags},
        "cpuid": {"pku": pku, "ospke": ospke},
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "libc": " ".join(platform.libc_ver()),
        "transparent_hugepage": thp,
        "mem_available": mem_available(),
        "page_size": mmap.PAGESIZE,
        "backend": info.name,
        "backend_reason": info.reason,
        "backend_forced": info.forced,
    }


# -- the busy second thread -------------------------------------------------------------


class BusyWriter:
    """A second thread that writes its own memory from C, without the GIL, until stopped."""

    def __init__(self, nbytes: int, cpu: int | None) -> None:
        self.nbytes = nbytes
        self.cpu = cpu
        self.address = _floor.mmap_anon(nbytes, mmap.PROT_READ | mmap.PROT_WRITE)
        _floor.touch_pages(self.address, nbytes, 1)
        self.sweeps = 0
        self._flag = ctypes.c_int(0)
        self._thread: threading.Thread | None = None

    def _body(self, started: threading.Event) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})  # 0: this thread only
        started.set()
        self.sweeps += _floor.busy_writer(self.address, self.nbytes, ctypes.addressof(self._flag))

    def start(self) -> None:
        self._flag.value = 0
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._body, args=(started,), name="pkeyguard-bench-busy", daemon=True
        )
        self._thread.start()
        started.wait()
        time.sleep(0.001)  # let it leave the GIL and get going

    def stop(self) -> None:
        self._flag.value = 1
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        _floor.munmap(self.address, self.nbytes)


# -- fixtures ---------------------------------------------------------------------------


@dataclass
class Guarded:
    """A touched region tagged with its own key, and its reusable ReadWrite guard."""

    region: RegionGuard[Any]
    key: PkeyGuard
    assoc: AssociatedRegion[Any]
    guard: WriteGuard[Any]

    @property
    def address(self) -> int:
        return self.region.address

    @property
    def length(self) -> int:
        return self.region.mapped_size


class Fixtures:
    def __init__(self) -> None:
        self.items: list[Guarded] = []
        self._buffers: list[tuple[memoryview, mmap.mmap]] = []

    def buffer(self, nbytes: int) -> memoryview:
        """A page-aligned anonymous buffer (plain memory, no key)."""
        m = mmap.mmap(-1, nbytes)
        view = memoryview(m)
        self._buffers.append((view, m))
        return view

    def make(self, value_type: Any, name: str) -> Guarded:
        region: RegionGuard[Any] = RegionGuard(value_type, AccessPermissions.ReadWrite, name=name)
        try:
            key = PkeyGuard(PkeyPermissions.NoAccess, name=name)
        except BaseException:
            region.close()
            raise
        try:
            assoc = key.associate(region)
        except BaseException:
            key.close()
            region.close()
            raise
        guard = assoc.set_access_rights(PkeyPermissions.ReadWrite)
        item = Guarded(region, key, assoc, guard)
        self.items.append(item)
        with guard:
            _floor.touch_pages(item.address, item.length, 1)
        return item

    def close(self) -> None:
        for view, m in self._buffers:
            view.release()
            m.close()
        self._buffers.clear()
        for item in reversed(self.items):
            item.key.close()
            item.region.close()
        self.items.clear()


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.restype = ctypes.c_int
    return libc


# -- the cases --------------------------------------------------------------------------


@dataclass
class Plan:
    cases: list[Case]
    skipped: list[dict[str, str]]
    fixtures: Fixtures


def _native(fn: Callable[..., int], *args: object) -> Runner:
    def run(n: int) -> int:
        return fn(*args, n)

    return run


def _mprotect_runner(address: int, length: int, first: int, second: int) -> Runner:
    def run(n: int) -> int:
        return _floor.mprotect_pairs(address, length, n, first, second)

    return run


def build(mode: Mode, backend: str, *, gib_ok: bool) -> Plan:
    """Regions, keys, buffers and every case of the run."""
    pku = backend == "pku"
    cases: list[Case] = []
    skipped: list[dict[str, str]] = []

    def add(
        cid: str,
        label: str,
        group: str,
        run: Runner,
        *,
        size: int | None = None,
        floor: str | None = None,
        native: bool = False,
    ) -> str:
        threads = int(cid.rsplit("/", 1)[1].rstrip("t"))
        cases.append(Case(cid, label, group, threads, size, floor, native, run))
        return cid

    sizes = list(mode.sizes)
    if GiB in sizes and not gib_ok:
        sizes.remove(GiB)
        skipped.append({"case": "every 1 GiB row", "reason": "MemAvailable is below 2 GiB"})
    fixtures = Fixtures()
    try:
        by_size = {size: fixtures.make(size, f"bench {size_label(size)}") for size in sizes}
        scalar = fixtures.make(ctypes.c_uint32, "bench scalar")
        bulk = fixtures.make(mode.bulk_bytes, "bench bulk")
        aligned = fixtures.buffer(mode.bulk_bytes)
    except BaseException:
        fixtures.close()
        raise
    libc = _libc()
    prot_rw, prot_none = int(AccessPermissions.ReadWrite), _core.PROT_NONE
    # The pair a switch performs on the pages: open, then back to rest (mprotect backend:
    # RW then NONE).  On pku the pages stay RW, so the mprotect alternative closes them and
    # opens them again.
    p1, p2 = (prot_none, prot_rw) if pku else (prot_rw, prot_none)
    nop = _core.Key(0, _core.MODE_NOP, 2)._guard(2)
    # The mprotect switch path with nothing to protect: a MODE_MPROTECT key with no regions
    # runs exactly the bookkeeping of a real switch and makes no system call.
    no_syscall = _core.Key(0x7FFF, _core.MODE_MPROTECT, 0)._guard(2)
    first = by_size[sizes[0]]
    rw = "P.ReadWrite"
    P = PkeyPermissions

    for t in (1, 2):
        add(
            case_id("floor.loop", t),
            "empty loop iteration (timeit overhead)",
            "floor",
            py_loop("pass", {}),
        )
        nop_id = add(
            case_id("floor.nop_cm", t),
            "with C guard on a MODE_NOP key (empty C CM)",
            "floor",
            py_loop("with g: pass", {"g": nop}),
        )
        if pku:
            add(
                case_id("floor.rdpkru", t),
                "C loop: RDPKRU",
                "floor",
                _native(_floor.rdpkru_loop),
                native=True,
            )
            pair = add(
                case_id("floor.wrpkru_pair", t),
                "C loop: (RDPKRU, WRPKRU) x2, as a guard pair does",
                "floor",
                _native(_floor.wrpkru_pairs, first.key.key),
                native=True,
            )
            if hasattr(libc, "pkey_set"):
                pkey_set = libc.pkey_set
                pkey_set.argtypes = [ctypes.c_int, ctypes.c_uint]
                pkey_set.restype = ctypes.c_int
                add(
                    case_id("alt.pkey_set", t),
                    "ctypes glibc pkey_set(k, 0); pkey_set(k, AD)",
                    "alt",
                    py_loop("ps(k, 0); ps(k, 1)", {"ps": pkey_set, "k": first.key.key}),
                    floor=pair,
                )
            else:
                skipped.append({"case": "alt.pkey_set", "reason": "glibc has no pkey_set"})
        else:
            add(
                case_id("switch.no_syscall", t),
                "with C guard on a MODE_MPROTECT key with no regions",
                "switch",
                py_loop("with g: pass", {"g": no_syscall}),
                floor=nop_id,
            )
        add(
            case_id("switch.lookup", t),
            "assoc.set_access_rights(ReadWrite) alone (no with)",
            "switch",
            py_loop(f"x = assoc.set_access_rights({rw})", {"assoc": first.assoc, "P": P}),
            floor=nop_id,
        )
        add(
            case_id("switch.enum_attr", t),
            "PkeyPermissions.ReadWrite (enum attribute)",
            "switch",
            py_loop(f"x = {rw}", {"P": P}),
            floor=nop_id,
        )
        for size in sizes:
            item = by_size[size]
            pages = {"a": item.address, "n": item.length, "p1": p1, "p2": p2}
            mp_c = add(
                case_id("floor.mprotect_c", t, size),
                "C loop: mprotect pair on the same pages",
                "alt" if pku else "floor",
                _mprotect_runner(item.address, item.length, p1, p2),
                size=size,
                native=True,
            )
            hw = case_id("floor.wrpkru_pair", t) if pku else mp_c
            add(
                case_id("switch.guard", t, size),
                "with g: (reused guard)",
                "switch",
                py_loop("with g: pass", {"g": item.guard}),
                size=size,
                floor=hw,
            )
            add(
                case_id("switch.set_access_rights", t, size),
                "with assoc.set_access_rights(ReadWrite):",
                "switch",
                py_loop(f"with assoc.set_access_rights({rw}): pass", {"assoc": item.assoc, "P": P}),
                size=size,
                floor=hw,
            )
            add(
                case_id("alt.mprotect_ext", t, size),
                "Python: C-extension mprotect(...) x2 (no guard)",
                "alt",
                py_loop("mp(a, n, p1); mp(a, n, p2)", {"mp": _floor.mprotect, **pages}),
                size=size,
                floor=mp_c,
            )
            add(
                case_id("alt.mprotect_ctypes", t, size),
                "ctypes libc.mprotect pair",
                "alt",
                py_loop("mp(a, n, p1); mp(a, n, p2)", {"mp": libc.mprotect, **pages}),
                size=size,
                floor=mp_c,
            )

    # Scalar access (one thread): a c_uint32 view against memoryview element access.
    mv = memoryview(bytearray(4096))
    mvi = mv.cast("I")
    sg = {"g": scalar.guard}
    view = {"enter": "g", "pre": "v = g.mut_ref_guard()"}
    read = add(
        case_id("scalar.mv_typed_read", 1),
        "x = mv.cast('I')[0] (memoryview)",
        "scalar",
        py_loop("x = m[0]", {"m": mvi}),
    )
    write = add(
        case_id("scalar.mv_typed_write", 1),
        "mv.cast('I')[0] = 1 (memoryview)",
        "scalar",
        py_loop("m[0] = 1", {"m": mvi}),
    )
    add(
        case_id("scalar.mv_read", 1),
        "x = mv[0] (memoryview, format B)",
        "scalar",
        py_loop("x = m[0]", {"m": mv}),
        floor=read,
    )
    add(
        case_id("scalar.mv_write", 1),
        "mv[0] = 1 (memoryview, format B)",
        "scalar",
        py_loop("m[0] = 1", {"m": mv}),
        floor=write,
    )
    add(
        case_id("scalar.view_read", 1),
        "x = v.value (c_uint32 view)",
        "scalar",
        py_loop("x = v.value", sg, **view),
        floor=read,
    )
    add(
        case_id("scalar.view_write", 1),
        "v.value = 1 (c_uint32 view)",
        "scalar",
        py_loop("v.value = 1", sg, **view),
        floor=write,
    )

    # Bulk copies (one thread).  A bytearray's data starts 16 bytes into a page, and memcpy
    # between two of them is measurably slower than to or from page-aligned memory, so the
    # plain copies are measured both ways.
    n = mode.bulk_bytes
    sz = size_label(n)
    src = bytearray(b"\xa5") * n
    src_mv, dst_mv = memoryview(src), memoryview(bytearray(n))
    dst_mv[:] = src_mv  # fault the destination in
    aligned[:] = src_mv
    bg = {"g": bulk.guard}
    mview = {"enter": "g", "pre": "m = memoryview(g.mut_ref_guard())", "post": "m.release()"}
    plain = add(
        case_id("bulk.plain_copy", 1),
        f"plain copy {sz}: dst_mv[:] = src_mv (two bytearrays)",
        "bulk",
        py_loop("d[:] = s", {"d": dst_mv, "s": src_mv}),
        size=n,
    )
    add(
        case_id("bulk.plain_copy_in", 1),
        f"plain copy {sz}: bytearray -> page-aligned mmap",
        "bulk",
        py_loop("d[:] = s", {"d": aligned, "s": src_mv}),
        size=n,
        floor=plain,
    )
    add(
        case_id("bulk.plain_copy_out", 1),
        f"plain copy {sz}: page-aligned mmap -> bytearray",
        "bulk",
        py_loop("d[:] = s", {"d": dst_mv, "s": aligned}),
        size=n,
        floor=plain,
    )
    plain_bytes = add(
        case_id("bulk.plain_bytes", 1),
        f"plain bytes(bytearray) {sz}",
        "bulk",
        py_loop("x = bytes(s)", {"s": src}),
        size=n,
    )
    add(
        case_id("bulk.copy_in_mv", 1),
        f"copy in {sz}: memoryview(view)[:] = src_mv",
        "bulk",
        py_loop("m[:] = s", {**bg, "s": src_mv}, **mview),
        size=n,
        floor=plain,
    )
    add(
        case_id("bulk.copy_in_value", 1),
        f"copy in {sz}: view.value = src_mv",
        "bulk",
        py_loop("v.value = s", {**bg, "s": src_mv}, **view),
        size=n,
        floor=plain,
    )
    add(
        case_id("bulk.copy_out_mv", 1),
        f"copy out {sz}: dst_mv[:] = memoryview(view)",
        "bulk",
        py_loop("d[:] = m", {**bg, "d": dst_mv}, **mview),
        size=n,
        floor=plain,
    )
    add(
        case_id("bulk.copy_out_bytes", 1),
        f"copy out {sz}: bytes(view)",
        "bulk",
        py_loop("x = bytes(v)", bg, **view),
        size=n,
        floor=plain_bytes,
    )
    return Plan(cases, skipped, fixtures)


# -- running ----------------------------------------------------------------------------


@contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def _gc_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def _blocks(cases: list[Case]) -> list[list[Case]]:
    """Cases that work on the same memory, kept together (see :func:`measure`)."""
    blocks: dict[str, list[Case]] = {}
    for case in cases:
        if case.group in ("scalar", "bulk"):
            key = case.group
        elif case.size is not None:
            key = f"region {case.size}"
        else:
            key = "no region"
        blocks.setdefault(key, []).append(case)
    return list(blocks.values())


def _cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds so far: (used on this machine, used by this process, stolen by the host)."""
    fields = (_read("/proc/stat") or "cpu 0").splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields] + [0] * 8
    # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    busy = sum(ticks[0:3]) + sum(ticks[5:7])
    hz = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy / hz, own.user + own.system, ticks[7] / hz


def measure(
    cases: list[Case], rounds: int, sample_s: float, busy: BusyWriter, seed: int, deadline: float
) -> tuple[list[float], list[float]]:
    """Calibrate, then take one sample per case per round.

    Each round visits the blocks (cases on the same memory) in a shuffled order and the
    cases of a block in a shuffled order, after one untimed iteration that warms the
    block's page tables and caches: otherwise whichever case came first after another
    region would pay for faulting them back in, at 64 MiB and more a steady 10-25 %.
    Stops early (after at least 3 rounds) when the next round would end past ``deadline``
    (a ``time.monotonic()`` value).  Returns, for each round taken, the CPUs that other
    processes kept busy and the CPUs the hypervisor stole, on average: a quiet machine shows
    about 0 for both.
    """
    rng = random.Random(seed)
    target = sample_s * 1e9
    per_round = 0.0
    phases = {t: _blocks([c for c in cases if c.threads == t]) for t in (1, 2)}
    for t, blocks in phases.items():
        if t == 2:
            busy.start()
        try:
            for block in blocks:
                for case in block:
                    _progress(f"calibrating {case.id}")
                    case.iterations = calibrate(case.run, target)
        finally:
            busy.stop()
    others: list[float] = []
    stolen: list[float] = []
    for r in range(rounds):
        start = time.monotonic()
        if r >= _MIN_ROUNDS and start + per_round > deadline:
            break
        machine0, own0, steal0 = _cpu_seconds()
        for t, blocks in phases.items():
            _progress(f"round {r + 1}/{rounds}, {t} thread(s)")
            if t == 2:
                busy.start()
            try:
                for block in rng.sample(blocks, len(blocks)):
                    order = rng.sample(block, len(block))
                    order[0].run(1)
                    for case in order:
                        case.samples.append(case.run(case.iterations) / case.iterations)
            finally:
                busy.stop()
        machine1, own1, steal1 = _cpu_seconds()
        elapsed = time.monotonic() - start
        others.append(max(0.0, (machine1 - machine0) - (own1 - own0)) / elapsed)
        stolen.append((steal1 - steal0) / elapsed)
        per_round = max(per_round, elapsed)
    _progress("")
    return others, stolen


# -- results ----------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    median: float
    minimum: float
    net: float
    ratio: float | None = None


def summarize(cases: list[Case]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    loops = {
        c.threads: statistics.median(c.samples) for c in cases if c.id.startswith("floor.loop")
    }
    for c in cases:
        med = statistics.median(c.samples)
        net = med if c.native or c.id.startswith("floor.loop") else med - loops[c.threads]
        rows[c.id] = Row(c, med, min(c.samples), net)
    for row in rows.values():
        floor = rows.get(row.case.floor) if row.case.floor else None
        if floor is not None and floor.net > 0:
            row.ratio = row.net / floor.net
    return rows


def derived(rows: dict[str, Row]) -> list[dict[str, Any]]:
    """Framework overhead: switch minus the hardware operation, over the empty C CM."""
    out: list[dict[str, Any]] = []
    for row in rows.values():
        c = row.case
        if c.group != "switch" or c.size is None or c.floor is None or c.floor not in rows:
            continue
        hw = rows[c.floor]
        nop = rows[case_id("floor.nop_cm", c.threads)]
        net = row.net - hw.net
        out.append(
            {
                "id": c.id.replace("switch.", "overhead.", 1),
                "label": f"{c.label} minus {hw.case.label}",
                "threads": c.threads,
                "size": c.size,
                "of": c.id,
                "minus": hw.case.id,
                "floor": nop.case.id,
                "net_ns": net,
                "ratio": net / nop.net if nop.net > 0 else None,
            }
        )
    return out


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def goals(
    rows: dict[str, Row], over: list[dict[str, Any]], backend: str, sizes: Sequence[int]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(goal: str, values: dict[str, float], ok: bool | None, note: str = "") -> None:
        out.append({"goal": goal, "values": values, "status": _status(ok), "note": note})

    def ratio(cid: str) -> float | None:
        row = rows.get(cid)
        return row.ratio if row is not None else None

    pairs = {
        f"{size_label(s)} {t}t": r
        for t in (1, 2)
        for s in sizes
        if (r := ratio(case_id("switch.guard", t, s))) is not None
    }
    if backend == "mprotect":
        add(
            "mprotect switch pair <= 1.15x raw C mprotect pair on the same pages",
            pairs,
            all(v <= 1.15 for v in pairs.values()),
        )
    else:
        add(
            "mprotect switch pair <= 1.15x raw C mprotect pair",
            {},
            None,
            "pku backend: switches do not call mprotect",
        )
    nop = {t: rows[case_id("floor.nop_cm", t)].net for t in (1, 2)}
    fw: dict[str, float] = {}
    fw_sar: dict[str, float] = {}
    if backend == "mprotect":
        # Clean: the same switch path with no system call to subtract.
        for t in (1, 2):
            clean = rows[case_id("switch.no_syscall", t)]
            lookup = rows[case_id("switch.lookup", t)]
            if nop[t] > 0:
                fw[f"no-syscall switch {t}t"] = clean.net / nop[t]
                fw_sar[f"no-syscall switch + lookup {t}t"] = (clean.net + lookup.net) / nop[t]
    for d in over:
        if d["ratio"] is None or backend == "mprotect":
            continue
        name = f"{size_label(d['size'])} {d['threads']}t"
        (fw if d["of"].startswith("switch.guard") else fw_sar)[name] = d["ratio"]
    clean_note = (
        "on mprotect: the same switch path on a key with no regions, so no system call; "
        "subtracting a separately timed system call of microseconds per size (the JSON's "
        "'derived' entries) is noise-dominated"
        if backend == "mprotect"
        else ""
    )

    def judged(values: dict[str, float]) -> bool | None:
        return all(v <= 1.3 for v in values.values()) if values else None

    add(
        "framework overhead (with g: minus hardware) <= 1.3x empty C CM", fw, judged(fw), clean_note
    )
    add(
        "framework overhead of with assoc.set_access_rights(RW): <= 1.3x empty C CM",
        fw_sar,
        judged(fw_sar),
        "includes the Python-level guard lookup and the enum attribute",
    )
    scalar: dict[str, float] = {}
    for op in ("read", "write"):
        view = rows[case_id(f"scalar.view_{op}", 1)]
        for floor in (f"scalar.mv_typed_{op}", f"scalar.mv_{op}"):
            base = rows[case_id(floor, 1)]
            if base.net > 0:
                scalar[f"{op} vs {base.case.label.split(' (')[0]}"] = view.net / base.net
    add(
        "scalar view read/write <= 1.3x memoryview element access",
        scalar,
        all(v <= 1.3 for v in scalar.values()),
    )
    bulk: dict[str, float] = {}
    same = {
        "copy_in_mv": "plain_copy_in",
        "copy_in_value": "plain_copy_in",
        "copy_out_mv": "plain_copy_out",
        "copy_out_bytes": "plain_bytes",
    }
    for slug, floor in same.items():
        row = rows[case_id(f"bulk.{slug}", 1)]
        if row.ratio:
            bulk[slug] = 1 / row.ratio
        base = rows[case_id(f"bulk.{floor}", 1)]
        if floor != "plain_bytes" and row.net > 0:
            bulk[f"{slug} vs page-aligned plain"] = base.net / row.net
    add(
        "bulk copy >= 90% of the throughput of a plain copy",
        bulk,
        all(v >= 0.9 for v in bulk.values()),
        "against two bytearrays, and against a plain copy with the region's alignment",
    )
    if backend == "pku":
        whole = {
            f"{size_label(s)} {t}t": rows[case_id("switch.guard", t, s)].net
            for t in (1, 2)
            for s in sizes
        }
        add("pku: whole pair <= 80 ns (current Xeon)", whole, all(v <= 80 for v in whole.values()))
        values = list(whole.values())
        spread = max(values) / min(values) if min(values) > 0 else float("inf")
        add(
            "pku: whole pair flat within 10% across region sizes, 1 and 2 threads",
            {"max/min": spread},
            spread <= 1.10,
        )
    else:
        add("pku: whole pair <= 80 ns, flat across sizes and threads", {}, None, "mprotect backend")
    return out


def to_json(
    machine: dict[str, Any],
    config: dict[str, Any],
    rows: dict[str, Row],
    over: list[dict[str, Any]],
    goal_list: list[dict[str, Any]],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "schema": 1,
        "machine": machine,
        "config": config,
        "cases": [
            {
                "id": r.case.id,
                "label": r.case.label,
                "group": r.case.group,
                "threads": r.case.threads,
                "size": r.case.size,
                "native": r.case.native,
                "floor": r.case.floor,
                "iterations": r.case.iterations,
                "samples_ns": r.case.samples,
                "median_ns": r.median,
                "min_ns": r.minimum,
                "net_ns": r.net,
                "ratio": r.ratio,
            }
            for r in rows.values()
        ],
        "derived": over,
        "goals": goal_list,
        "skipped": skipped,
    }


# -- output -----------------------------------------------------------------------------


def _ns(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def _x(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if abs(ratio) < 100 else f"{ratio:.3g}x"


_SECTIONS = (
    ("floor", "floors"),
    ("switch", "switch pairs"),
    ("alt", "what a user would write instead"),
    ("scalar", "scalar access"),
    ("bulk", "bulk copy"),
)


def render(data: dict[str, Any], out: TextIO) -> None:
    m, cfg = data["machine"], data["config"]
    flags = m["cpuinfo_flags"]
    yes = {True: "yes", False: "no"}
    print(f"pkeyguard bench ({cfg['mode']} mode), {cfg['wall_s']:.1f} s", file=out)
    print(
        f"machine: {m['cpu_model']} | {m['cpus']} CPUs ({m['cpus_usable']} usable) | "
        f"pku={yes[flags['pku']]} ospke={yes[flags['ospke']]} | Linux {m['kernel']} | "
        f"{m['implementation']} {m['python']} | THP {m['transparent_hugepage']}",
        file=out,
    )
    print(f"backend: {m['backend']} ({m['backend_reason']})", file=out)
    print(
        f"{cfg['rounds']} rounds, ~{cfg['sample_s'] * 1e3:g} ms per sample; median and min "
        "over rounds; net = median minus the empty loop iteration (Python loops); "
        f"busy thread: {size_label(cfg['busy_bytes'])} buffer, {cfg['pinning']}",
        file=out,
    )
    print(
        f"CPUs kept busy by other processes during the rounds: {cfg['other_cpus_mean']:.2f} on "
        f"average, at most {max(cfg['other_cpus_per_round']):.2f} in a round; stolen by the "
        f"hypervisor: at most {max(cfg['stolen_cpus_per_round']):.2f} in a round",
        file=out,
    )
    cases = data["cases"]
    by_id = {c["id"]: c for c in cases}
    width = max(len(c["label"]) for c in cases) + 2
    head = f"{'case':<{width}}{'size':>8}{'median':>14}{'min':>14}{'net':>14}{'x floor':>11}  floor"
    for t in (1, 2):
        plural = "s" if t > 1 else ""
        for group, title in _SECTIONS:
            rows = [c for c in cases if c["threads"] == t and c["group"] == group]
            if not rows:
                continue
            print(f"\n## {title}, {t} thread{plural} (ns per operation)", file=out)
            print(head, file=out)
            for c in rows:
                floor = by_id.get(c["floor"]) if c["floor"] else None
                print(
                    f"{c['label']:<{width}}{size_label(c['size']):>8}"
                    f"{_ns(c['median_ns']):>14}{_ns(c['min_ns']):>14}{_ns(c['net_ns']):>14}"
                    f"{_x(c['ratio']):>11}  {floor['label'] if floor else ''}",
                    file=out,
                )
        over = [d for d in data["derived"] if d["threads"] == t]
        if over and m["backend"] == "mprotect":
            # A difference of two separately timed system calls of microseconds: noise.
            # The goals use the no-syscall switch instead; the differences stay in the JSON.
            over = []
        if over:
            print(
                f"\n## framework overhead, {t} thread{plural}: switch minus hardware floor, "
                "over the empty C CM",
                file=out,
            )
            for d in over:
                what = (
                    "with g:"
                    if d["of"].startswith("switch.guard")
                    else "with assoc.set_access_rights(RW):"
                )
                print(
                    f"{what:<{width}}{size_label(d['size']):>8}{'':>28}{_ns(d['net_ns']):>14}"
                    f"{_x(d['ratio']):>11}  {by_id[d['floor']]['label']}",
                    file=out,
                )
    print("\n## goals", file=out)
    for g in data["goals"]:
        if "bulk" in g["goal"]:
            vals = [f"{k}: {v * 100:.0f}%" for k, v in g["values"].items()]
        elif "80 ns" in g["goal"]:
            vals = [f"{k}: {v:.1f} ns" for k, v in g["values"].items()]
        else:
            vals = [f"{k}: {_x(v)}" for k, v in g["values"].items()]
        print(f"[{g['status']}] {g['goal']}", file=out)
        if vals:
            print(f"    {', '.join(vals)}", file=out)
        if g["note"]:
            print(f"    ({g['note']})", file=out)
    for s in data["skipped"]:
        print(f"skipped: {s['case']}: {s['reason']}", file=out)


def plot(data: dict[str, Any], path: str) -> None:
    # Imported by name: matplotlib is optional, and its types are not needed here.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    fig, ax = plt.subplots(figsize=(8, 5))
    lines = [
        ("switch.guard", "with g:"),
        ("floor.mprotect_c", "C mprotect pair"),
        ("alt.mprotect_ctypes", "ctypes mprotect pair"),
    ]
    if data["machine"]["backend"] == "pku":
        lines.append(("floor.wrpkru_pair", "C RDPKRU/WRPKRU pair"))
    lines.append(("floor.nop_cm", "empty C context manager"))
    sizes = data["config"]["sizes"]
    by_id = {c["id"]: c for c in data["cases"]}
    for slug, label in lines:
        for t, style in ((1, "-o"), (2, "--s")):
            ys = []
            for s in sizes:
                row = by_id.get(case_id(slug, t, s)) or by_id.get(case_id(slug, t))
                ys.append(row["net_ns"] if row else float("nan"))
            ax.plot(sizes, ys, style, label=f"{label}, {t} thread{'s' if t > 1 else ''}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [size_label(s) for s in sizes])
    ax.set_xlabel("region size (touched)")
    ax.set_ylabel("ns per switch pair (net)")
    m = data["machine"]
    ax.set_title(
        f"pkeyguard switch cost, {m['backend']} backend\n{m['cpu_model']}, Python {m['python']}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- entry points -----------------------------------------------------------------------


def run(mode: Mode, *, rounds: int | None = None, pin: bool = True) -> dict[str, Any]:
    """Run the benchmark and return the JSON-ready results."""
    started = time.monotonic()
    machine = machine_info()
    backend = machine["backend"]
    avail = machine["mem_available"]
    gib_ok = avail is None or avail >= GiB + _GIB_HEADROOM
    cpus = sorted(os.sched_getaffinity(0))
    main_cpu, busy_cpu = (cpus[0], cpus[1]) if pin and len(cpus) >= 2 else (None, None)
    pinning = (
        f"main thread on CPU {main_cpu}, busy thread on CPU {busy_cpu}"
        if main_cpu is not None
        else "not pinned"
    )
    if len(cpus) < 2:
        pinning += " (one usable CPU: the busy thread shares it)"
    n_rounds = rounds or mode.rounds
    seed = int.from_bytes(os.urandom(4), "little")
    plan = build(mode, backend, gib_ok=gib_ok)
    try:
        busy = BusyWriter(_BUSY_BYTES, busy_cpu)
        try:
            with _pinned(main_cpu), _gc_off():
                others, stolen = measure(
                    plan.cases, n_rounds, mode.sample_s, busy, seed, started + mode.budget_s
                )
        finally:
            busy.close()
    finally:
        plan.fixtures.close()
    rows = summarize(plan.cases)
    over = derived(rows)
    sizes = sorted({c.size for c in plan.cases if c.group == "switch" and c.size is not None})
    goal_list = goals(rows, over, backend, sizes)
    config = {
        "mode": mode.name,
        "rounds": len(others),
        "other_cpus_mean": statistics.fmean(others),
        "other_cpus_per_round": others,
        "stolen_cpus_per_round": stolen,
        "sample_s": mode.sample_s,
        "sizes": sizes,
        "bulk_bytes": mode.bulk_bytes,
        "busy_bytes": _BUSY_BYTES,
        "busy_sweeps": busy.sweeps,
        "pinning": pinning,
        "order_seed": seed,
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.monotonic() - started,
    }
    return to_json(machine, config, rows, over, goal_list, plan.skipped)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pkeyguard_bench",
        description="Cost of rights switches, views and copies, as ratios to floors "
        "measured in the same run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds, shorter samples, no 1 GiB region (< 10 s)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results (raw samples included) as JSON to FILE, or "
        "to stdout instead of the table when FILE is omitted",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw cost vs region size (needs matplotlib)"
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the main and busy threads to different CPUs",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.plot:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print(
                "--plot needs matplotlib, which is not installed: "
                "pip install 'pkeyguard-bench[plot]' (or pip install matplotlib)",
                file=sys.stderr,
            )
            return 2
    if args.json not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            print(f"--json {args.json}: the folder {folder} does not exist", file=sys.stderr)
            return 2
    data = run(MODES["quick" if args.quick else "default"], rounds=args.rounds, pin=not args.no_pin)
    if args.json == "-":
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        render(data, sys.stdout)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
    if args.plot:
        plot(data, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
