"""``python -m pkeyguard_bench``: what a rights switch costs, against floors from the same run.

Every figure is measured interleaved with the others in one process: each round takes one
timed sample of every case, in a fresh shuffled order (cases that work on the same memory
stay together, after one untimed warm-up iteration), and the table reports the median and
the minimum over the rounds.  A sample is a timeit-style tight loop calibrated to a target
duration; the cost of an empty loop iteration is measured the same way and subtracted
("net").  Native floors (a raw ``mprotect`` pair, RDPKRU/WRPKRU) loop and time themselves
in C (``_floor``), so they carry no interpreter cost at all.

The cases and goals are data (:mod:`pkeyguard_bench.specs`); this module builds the fixtures
they name, measures, judges the goals and reports.  Each case is divided by its floor from
the same run:

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
import dataclasses
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
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from pkeyguard import (
    AccessPermissions,
    AssociatedRegion,
    MprotectError,
    PkeyGuard,
    PkeyPermissions,
    RegionGuard,
    Secret,
    WriteGuard,
    _backend,
    _core,
    allocator,
    isolated,
)
from pkeyguard import backend as active_backend

from . import _floor
from .specs import (
    CASES,
    GOALS,
    HOT_KEYS,
    HOT_SHARE,
    MISS_KEYS,
    PATTERNS,
    WORKING_SETS,
    WORKSET_WARM,
    CaseSpec,
    Native,
    Py,
    Ratio,
    Scope,
    resolve,
)

__all__ = ["main", "run"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: A timed loop: runs ``n`` iterations and returns the elapsed nanoseconds.
Runner = Callable[[int], int]

#: The counters of ``_core._pool_stats`` whose deltas a case with ``counts`` reports.
POOL_COUNTERS = (
    "switches",
    "hits",
    "misses",
    "evictions",
    "retags",
    "parks",
    "allocs",
    "exhausted",
    "syncs",
)

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
    #: region sizes of the virtual-key miss rows: 1, 16 and 256 pages, and more
    miss_sizes: tuple[int, ...] = (4 * KiB, 64 * KiB, 1 * MiB)
    worksets: tuple[int, ...] = WORKING_SETS
    #: the guards a working-set sequence holds (it repeats after that many switches)
    sequence: int = 1 << 14


MODES = {
    "quick": Mode(
        "quick",
        (4 * KiB, 1 * MiB, 64 * MiB),
        rounds=7,
        sample_s=0.003,
        bulk_bytes=64 * MiB,
        budget_s=10.0,
    ),
    "default": Mode(
        "default",
        (4 * KiB, 1 * MiB, 64 * MiB, 1 * GiB),
        rounds=15,
        sample_s=0.02,
        bulk_bytes=64 * MiB,
        budget_s=75.0,
        miss_sizes=(4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB),
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
    """One measured row: a row of :data:`specs.CASES` for one thread count (and size)."""

    id: str
    slug: str  # the row's id in specs.CASES
    label: str
    group: str
    threads: int
    size: int | None
    floor: str | None  # id of the row this one is divided by
    native: bool  # timed inside C: no interpreter loop to subtract
    block: str  # cases on the same memory (see measure())
    run: Runner = field(repr=False)
    iterations: int = 0
    samples: list[float] = field(default_factory=list)  # ns per iteration, one per round
    keys: int | None = None  # the working-set size (workset rows)
    scope: str = ""  # the row's scope
    #: untimed before each sample: (loop, iterations)
    warm: tuple[Runner, int] | None = field(default=None, repr=False)
    around: Callable[[], AbstractContextManager[object]] | None = field(default=None, repr=False)
    pool_mode: int | None = None  # the pool whose counters are summed over the timed samples
    pool: dict[str, int] = field(default_factory=dict[str, int])
    pool_iterations: int = 0  # iterations of the samples the counters cover


def case_id(slug: str, threads: int, size: int | None = None, keys: int | None = None) -> str:
    where = f"@{size_label(size).replace(' ', '')}" if size is not None else ""
    where += f"@{keys}keys" if keys is not None else ""
    return f"{slug}{where}/{threads}t"


def pool_counters(mode: int) -> dict[str, int]:
    """The counters of a key pool now (``_core._pool_stats``)."""
    stats = _core._pool_stats(mode)
    return {name: int(stats[name]) for name in POOL_COUNTERS}


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


#: What makes a fixture's key: the active backend's, one of the simulated pool, or a pinned
#: one (created with rights, so it keeps its hardware number for life).
KeyKind = Literal["backend", "sim", "pinned"]


def new_key(kind: KeyKind, name: str) -> PkeyGuard:
    if kind == "sim":
        return _backend.SIMULATED.new_key(PkeyGuard, PkeyPermissions.NoAccess)
    rights = PkeyPermissions.ReadOnly if kind == "pinned" else PkeyPermissions.NoAccess
    return PkeyGuard(rights, name=name)


def ws_sequence(n: int, pattern: str, length: int) -> list[int]:
    """Which of ``n`` keys each switch of a working-set sequence enters (a fixed seed).

    ``hot``: :data:`specs.HOT_SHARE` of the switches go to the first :data:`specs.HOT_KEYS`
    keys, the others to the rest (all to the hot set when there is no rest); ``uniform``:
    any key with equal chance.
    """
    rng = random.Random(1_000_003 * n + (pattern == "hot"))
    hot = min(n, HOT_KEYS)
    if pattern == "uniform" or hot == n:
        return [rng.randrange(n) for _ in range(length)]
    return [
        rng.randrange(hot) if rng.random() < HOT_SHARE else rng.randrange(hot, n)
        for _ in range(length)
    ]


class Fixtures:
    def __init__(self) -> None:
        self.items: list[Guarded] = []
        self._buffers: list[tuple[memoryview, mmap.mmap]] = []
        self._secrets: list[Secret] = []
        self._nop: list[tuple[_core.Key, RegionGuard[Any]]] = []
        self._plain: list[RegionGuard[Any]] = []

    def nop_assoc(self) -> AssociatedRegion[Any]:
        """A one-page region associated with a ``MODE_NOP`` key: guards with no pool and no
        hardware operation, made by the same ``set_access_rights`` line."""
        region: RegionGuard[Any] = RegionGuard(mmap.PAGESIZE, name="bench nop")
        try:
            key = _core.Key(0, _core.MODE_NOP, 0)
            assoc: AssociatedRegion[Any] = key._bind(region, AssociatedRegion)
        except BaseException:
            region.close()
            raise
        self._nop.append((key, region))
        return assoc

    def plain(self, nbytes: int) -> RegionGuard[Any]:
        """A touched region with no key, mapped as a key's regions are: a floor on it meets
        the same neighbours (the kernel merges adjacent anonymous mappings of equal rights,
        and an mprotect of part of one splits it)."""
        region: RegionGuard[Any] = RegionGuard(nbytes, name="bench plain")
        self._plain.append(region)
        _floor.touch_pages(region.address, region.mapped_size, 1)
        return region

    @contextmanager
    def keys_open(self, n: int) -> Iterator[None]:
        """``n`` more keys (NoAccess, no region) open for the block."""
        keys: list[PkeyGuard] = []
        try:
            for _ in range(n):
                keys.append(PkeyGuard())
            yield
        finally:
            for key in keys:
                key.close()

    @contextmanager
    def isolated_view(self, n: int, item: Guarded, holder: _Holder) -> Iterator[None]:
        """``n`` more keys open; inside ``item``'s ReadWrite guard, then inside
        ``isolated(allow=[item.key])`` (so a guard on every other key is entered after the
        view's), ``holder.v`` is a write view of ``item``'s region."""
        with self.keys_open(n), item.guard as g:
            holder.v = g.mut_ref_guard()
            try:
                with isolated(allow=[item.key]):
                    yield
            finally:
                holder.v = None

    @contextmanager
    def secrets_alive(self, total: int) -> Iterator[None]:
        """More private-mmap secrets, so that ``total`` are alive in all (with the fixtures')."""
        extra: list[Secret] = []
        try:
            for _ in range(total - len(self._secrets)):
                extra.append(Secret(32, allocator=allocator.Secure(backing="mmap")))
            yield
        finally:
            for secret in extra:
                secret.close()

    def secret(self, backing: allocator.Backing) -> Secret | Missing:
        """A 32-byte Secret in ``backing`` memory (Missing where the kernel has none)."""
        try:
            secret = Secret(32, allocator=allocator.Secure(backing=backing))
        except MprotectError as exc:
            return Missing(f"no {backing} memory here: {exc}")
        self._secrets.append(secret)
        return secret

    def buffer(self, nbytes: int) -> memoryview:
        """A page-aligned anonymous buffer (plain memory, no key)."""
        m = mmap.mmap(-1, nbytes)
        view = memoryview(m)
        self._buffers.append((view, m))
        return view

    def make(self, value_type: Any, name: str, kind: KeyKind = "backend") -> Guarded:
        region: RegionGuard[Any] = RegionGuard(value_type, AccessPermissions.ReadWrite, name=name)
        try:
            key = new_key(kind, name)
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
        for secret in self._secrets:
            secret.close()
        self._secrets.clear()
        for item in reversed(self.items):
            item.key.close()
            item.region.close()
        self.items.clear()
        for key, region in self._nop:
            key._close()
            region.close()
        self._nop.clear()
        for region in self._plain:
            region.close()
        self._plain.clear()


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


@dataclass(frozen=True)
class Missing:
    """A fixture this machine cannot provide: the cases that bind it are skipped."""

    reason: str


def _pkey_set(libc: ctypes.CDLL) -> object:
    if not hasattr(libc, "pkey_set"):
        return Missing("glibc has no pkey_set")
    pkey_set = libc.pkey_set
    pkey_set.argtypes = [ctypes.c_int, ctypes.c_uint]
    pkey_set.restype = ctypes.c_int
    return pkey_set


def _runner(timing: Py | Native, env: Mapping[str, object]) -> Runner:
    if isinstance(timing, Native):
        fn: Callable[..., int] = getattr(_floor, timing.fn)
        args = [env[name] for name in timing.args]

        def run(n: int) -> int:
            return fn(*args, n)

        return run
    names = {local: env[fixture] for local, fixture in timing.names}
    if timing.view == "value":
        return py_loop(timing.stmt, names, enter="g", pre="v = g.mut_ref_guard()")
    if timing.view == "memoryview":
        return py_loop(
            timing.stmt,
            names,
            enter="g",
            pre="m = memoryview(g.mut_ref_guard())",
            post="m.release()",
        )
    return py_loop(timing.stmt, names)


def _specs(backend: str, groups: frozenset[str] | None = None) -> list[CaseSpec]:
    """The rows that run on ``backend``: those of ``groups`` (all when None), the floors
    they are divided by (and theirs), and the empty loop every net time subtracts."""
    specs = [spec for spec in CASES if backend in spec.backends]
    if groups is None:
        return specs
    by_slug = {spec.slug: spec for spec in specs}
    wanted = {spec.slug for spec in specs if spec.group in groups} | {"floor.loop"}
    todo = list(wanted)
    while todo:
        spec = by_slug[todo.pop()]
        floor = resolve(spec.floor, backend) if spec.floor is not None else None
        if floor is not None and floor not in wanted:
            wanted.add(floor)
            todo.append(floor)
    return [spec for spec in specs if spec.slug in wanted]


_ONE_THREAD: frozenset[Scope] = frozenset({"scalar", "bulk", "miss", "workset"})


def _instance_id(
    scope: str, slug: str, threads: int, size: int | None, keys: int | None = None
) -> str:
    """The case id of a row of ``scope`` for a case that runs on ``threads`` and ``size``
    (and ``keys``, for working sets)."""
    if scope in ("scalar", "bulk"):
        return case_id(slug, 1)
    if scope == "workset":
        return case_id(slug, 1, None, keys)
    if scope == "miss":
        return case_id(slug, 1, size)
    return case_id(slug, threads, size if scope == "size" else None)


class _Holder:
    """Where the ``keys.*_view`` fixtures put the view they make for each sample."""

    __slots__ = ("v",)

    def __init__(self) -> None:
        self.v: Any = None


class _Plain:
    """The cheapest class attribute: ``_Plain.a`` (metaclass ``type``)."""

    a = 1


def _pool_mode(counts: str | None, backend: str) -> int | None:
    if counts == "sim":
        return int(_core.MODE_SIM)
    if counts == "backend" and backend == "pku":
        return int(_core.MODE_PKU)
    return None


def build(mode: Mode, backend: str, *, gib_ok: bool, groups: frozenset[str] | None = None) -> Plan:
    """Regions, keys, buffers, and every case of :data:`specs.CASES` for this run.

    The fixtures that the rows name:

    ``nop_guard``         a guard on a ``MODE_NOP`` key: the C context manager, no hardware
    ``no_syscall_guard``  a guard on a ``MODE_MPROTECT`` key with no regions: the mprotect
                          switch path with nothing to protect, so no system call
    ``first.*``           the smallest region's association (``assoc``) and key's hardware
                          number (``pkey``; its logical id where it has none)
    ``region.*``          (per size) a touched region with its own key: its reusable
                          ReadWrite ``guard``, its ``assoc``, its ``address`` and ``length``
    ``prot.first/second`` the pair a switch performs on the pages: RW then NONE (mprotect); on
                          pku the pages stay RW, so the alternative closes and reopens them
    ``floor.mprotect``    ``_floor.mprotect``; ``libc.*``: ctypes ``mprotect``, ``pkey_set``
    ``call.table``        ``{call.key: nop_guard}``: ``with d.get(k):`` is a C method call
                          returning the empty C CM
    ``plain.class``       a plain class (metaclass ``type``) with a class attribute ``a``
    ``mv.u8``, ``mv.u32`` a memoryview of a bytearray, format B and cast to ``I``
    ``scalar.guard``      the ReadWrite guard of a ``c_uint32`` region
    ``bulk.*``            the bulk region's ``guard``; bytearray ``src`` and memoryviews
                          ``src_mv``, ``dst_mv`` of the bulk size; ``aligned``: a page-aligned
                          anonymous ``mmap`` of that size
    ``Secret``            the class; ``secure.mmap``/``secure.memfd``: ``allocator.Secure``
                          for each backing; ``secret.mmap``/``secret.memfd``: a 32-byte Secret
                          in each (memfd_secret cases are skipped where the kernel has none)
    ``secrets.100_alive`` a context manager that keeps 100 secrets alive in all
    ``isolated``          ``pkeyguard.isolated``
    ``keys.1k_open``, ``keys.10k_open``  context managers that keep 1,000 / 10,000 more keys
                          open (NoAccess, no region)
    ``keys.1k_view``, ``keys.10k_view``  the same, then the scalar region's ReadWrite guard,
                          then ``isolated(allow=[its key])``, with ``keys.holder.v`` a write
                          view of the scalar region
    ``nop.assoc``         a one-page region associated with a ``MODE_NOP`` key
    ``sim.guard/assoc``   a one-page region with a virtual key of the simulated pool
                          (``_backend.SIMULATED``): its ReadWrite guard and association
    ``pku.guard``         the same with a key of the active backend (virtual on pku)
    ``pinned.guard``      the same with a pinned key (created ReadOnly)
    ``miss.sim/pku``      (per miss size) ``next`` of a cycle over the ReadWrite guards of
                          ``MISS_KEYS`` keys (simulated; the backend's), a region each
    ``retag.*``           (per miss size) ``addresses`` of ``MISS_KEYS`` touched regions with no
                          key, mapped right after the miss keys' (so alike), their ``length``
    ``ws.PATTERN.sim/pku/nop``  (per working-set size) ``next`` of a cycle over a fixed
                          sequence (``ws_sequence``) of the ReadWrite guards of that many
                          keys (simulated, the backend's, MODE_NOP), a page each
    """
    pku = backend == "pku"
    specs = _specs(backend, groups)
    slugs = {spec.slug for spec in specs}

    def wanted(*fixtures: str) -> bool:
        return any(f in spec.fixtures for spec in specs for f in fixtures)

    skipped: list[dict[str, str]] = []
    sizes = list(mode.sizes)
    if GiB in sizes and not gib_ok:
        sizes.remove(GiB)
        skipped.append({"case": "every 1 GiB row", "reason": "MemAvailable is below 2 GiB"})
    if not any(spec.scope == "size" for spec in specs):
        sizes = sizes[:1]  # the first region's fixtures are still named
    miss_sizes = list(mode.miss_sizes) if any(s.scope == "miss" for s in specs) else []
    worksets = list(mode.worksets) if any(s.scope == "workset" for s in specs) else []
    no_pku = Missing("needs the pku backend")
    fixtures = Fixtures()
    try:
        by_size = {size: fixtures.make(size, f"bench {size_label(size)}") for size in sizes}
        scalar = fixtures.make(ctypes.c_uint32, "bench scalar")
        bulk_n = mode.bulk_bytes if wanted("bulk.guard") else mmap.PAGESIZE
        bulk = fixtures.make(bulk_n, "bench bulk")
        aligned = fixtures.buffer(bulk_n)
        secret_mmap = fixtures.secret("mmap")
        secret_memfd = fixtures.secret("memfd_secret")
        page = mmap.PAGESIZE
        sim = fixtures.make(page, "bench sim hit", "sim")
        nop_assoc = fixtures.nop_assoc()
        pku_hit: object = fixtures.make(page, "bench pku hit").guard if pku else no_pku
        pinned: object = fixtures.make(page, "bench pinned", "pinned").guard if pku else no_pku
        miss: dict[int, dict[str, object]] = {}
        for size in miss_sizes:
            label = f"bench miss {size_label(size)}"
            sets: dict[str, object] = {"miss.pku": no_pku}
            for kind in ("sim", "backend") if pku else ("sim",):
                guards = [fixtures.make(size, label, kind).guard for _ in range(MISS_KEYS)]
                sets["miss.sim" if kind == "sim" else "miss.pku"] = itertools.cycle(guards).__next__
            plain = [fixtures.plain(size) for _ in range(MISS_KEYS)]
            miss[size] = {
                **sets,
                "retag.addresses": tuple(r.address for r in plain),
                "retag.length": plain[0].mapped_size,
            }
        works: dict[int, dict[str, object]] = {}
        for n_keys in worksets:
            label = f"bench working set {n_keys}"
            per_kind: dict[str, list[Any]] = {
                "sim": [fixtures.make(page, label, "sim").guard for _ in range(n_keys)],
                "pku": [fixtures.make(page, label).guard for _ in range(n_keys)] if pku else [],
                "nop": [_core.Key(0, _core.MODE_NOP, 2)._guard(2) for _ in range(n_keys)],
            }
            env: dict[str, object] = {}
            for pattern in PATTERNS:
                order = ws_sequence(n_keys, pattern, mode.sequence)
                for kind, guards in per_kind.items():
                    env[f"ws.{pattern}.{kind}"] = (
                        itertools.cycle([guards[i] for i in order]).__next__ if guards else no_pku
                    )
            works[n_keys] = env
    except BaseException:
        fixtures.close()
        raise
    libc = _libc()
    prot_rw, prot_none = int(AccessPermissions.ReadWrite), 0
    mv = memoryview(bytearray(4096))
    n = bulk_n
    src = bytearray(b"\xa5") * n
    src_mv, dst_mv = memoryview(src), memoryview(bytearray(n))
    dst_mv[:] = src_mv  # fault the destination in
    aligned[:] = src_mv
    first = by_size[sizes[0]]
    # The number its key holds now (the pku floors' RDPKRU/WRPKRU work on it): a virtual key
    # made before the other fixtures may have been parked by them, so it takes one back
    # first.  key.key is a logical id since issue 11, never a hardware number.
    with first.guard:
        pass
    first_hw = first.key.hardware_key
    nop_guard = _core.Key(0, _core.MODE_NOP, 2)._guard(2)

    def secrets_100() -> AbstractContextManager[object]:
        return fixtures.secrets_alive(100)

    holder = _Holder()

    def keys_open(n: int) -> Callable[[], AbstractContextManager[object]]:
        return lambda: fixtures.keys_open(n)

    def keys_view(n: int) -> Callable[[], AbstractContextManager[object]]:
        return lambda: fixtures.isolated_view(n, scalar, holder)

    common: dict[str, object] = {
        "nop_guard": nop_guard,
        "no_syscall_guard": _core.Key(0x7FFF, _core.MODE_MPROTECT, 0)._guard(2),
        "PkeyPermissions": PkeyPermissions,
        "call.table": {PkeyPermissions.ReadWrite: nop_guard},
        "call.key": PkeyPermissions.ReadWrite,
        "plain.class": _Plain,
        "first.assoc": first.assoc,
        # (no number on mprotect, where only a pku plan built for the tests reads it)
        "first.pkey": first_hw if first_hw is not None else first.key.key,
        "prot.first": prot_none if pku else prot_rw,
        "prot.second": prot_rw if pku else prot_none,
        "prot.none": prot_none,
        "prot.rw": prot_rw,
        "floor.mprotect": _floor.mprotect,
        "libc.mprotect": libc.mprotect,
        "libc.pkey_set": _pkey_set(libc),
        "mv.u8": mv,
        "mv.u32": mv.cast("I"),
        "scalar.guard": scalar.guard,
        "bulk.guard": bulk.guard,
        "bulk.src": src,
        "bulk.src_mv": src_mv,
        "bulk.dst_mv": dst_mv,
        "bulk.aligned": aligned,
        "Secret": Secret,
        "secure.mmap": allocator.Secure(backing="mmap"),
        "secure.memfd": secret_memfd
        if isinstance(secret_memfd, Missing)
        else allocator.Secure(backing="memfd_secret"),
        "secret.mmap": secret_mmap,
        "secret.memfd": secret_memfd,
        "secrets.100_alive": secrets_100,
        "isolated": isolated,
        "keys.holder": holder,
        "keys.1k_open": keys_open(1000),
        "keys.10k_open": keys_open(10000),
        "keys.1k_view": keys_view(1000),
        "keys.10k_view": keys_view(10000),
        "nop.assoc": nop_assoc,
        "sim.guard": sim.guard,
        "sim.assoc": sim.assoc,
        "pku.guard": pku_hit,
        "pinned.guard": pinned,
    }
    per_size = {
        size: {
            **common,
            "region.guard": item.guard,
            "region.assoc": item.assoc,
            "region.address": item.address,
            "region.length": item.length,
        }
        for size, item in by_size.items()
    }
    per_miss = {size: {**per_size[sizes[0]], **env} for size, env in miss.items()}
    per_ws = {k: {**per_size[sizes[0]], **env} for k, env in works.items()}
    named = set(per_size[sizes[0]])
    for env in (*per_miss.values(), *per_ws.values()):
        named |= set(env)
    names_needed = {f for spec in CASES for f in spec.fixtures}
    if miss_sizes and worksets:
        unknown = sorted(names_needed - named)
    else:  # a partial plan: check only what its rows name
        unknown = sorted({f for spec in specs for f in spec.fixtures} - named)
    if unknown:
        fixtures.close()
        raise LookupError(f"specs.CASES names fixtures that build() does not make: {unknown}")
    scope_of = {spec.slug: spec.scope for spec in specs}
    cases: list[Case] = []

    def add(
        spec: CaseSpec,
        threads: int,
        size: int | None,
        env: Mapping[str, object],
        keys: int | None = None,
    ) -> None:
        missing = [m for f in spec.fixtures if isinstance(m := env[f], Missing)]
        if missing:
            if not any(s["case"] == spec.slug for s in skipped):
                skipped.append({"case": spec.slug, "reason": missing[0].reason})
            return
        floor = None
        if spec.floor is not None:
            slug = resolve(spec.floor, backend)
            floor = _instance_id(scope_of[slug], slug, threads, size, keys)
        block = {
            "thread": "no region",
            "size": f"region {size}",
            "miss": f"miss {size}",
            "workset": f"working set {keys}",
        }.get(spec.scope, spec.scope)
        warm = None
        if spec.warm is not None and backend in spec.warm.backends:
            warm = (_runner(spec.warm.timing, env), spec.warm.times)
        around: Any = env[spec.around] if spec.around is not None else None
        cases.append(
            Case(
                _instance_id(spec.scope, spec.slug, threads, size, keys),
                spec.slug,
                spec.label.replace("{bulk}", size_label(n)),
                spec.group,
                threads,
                size,
                floor,
                isinstance(spec.timing, Native),
                block,
                _runner(spec.timing, env),
                keys=keys,
                scope=spec.scope,
                warm=warm,
                around=around,
                pool_mode=_pool_mode(spec.counts, backend),
            )
        )

    for t in (1, 2):
        for spec in specs:
            if spec.scope == "thread":
                add(spec, t, None, common)
        for size in sizes:
            for spec in specs:
                if spec.scope == "size":
                    add(spec, t, size, per_size[size])
    one_thread: tuple[tuple[str, int | None], ...] = (("scalar", None), ("bulk", n))
    for scope, bulk_size in one_thread:
        for spec in specs:
            if spec.scope == scope:
                add(spec, 1, bulk_size, common)
    for size in miss_sizes:
        for spec in specs:
            if spec.scope == "miss":
                add(spec, 1, size, per_miss[size])
    for k in worksets:
        for spec in specs:
            if spec.scope == "workset":
                add(spec, 1, None, per_ws[k], k)
    assert {c.slug for c in cases} <= slugs
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
        blocks.setdefault(case.block, []).append(case)
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


def _around(case: Case) -> AbstractContextManager[object]:
    return case.around() if case.around is not None else nullcontext()


def _warm(case: Case) -> None:
    if case.warm is not None:
        run, times = case.warm
        run(times)


def sample(case: Case) -> float:
    """One timed sample of ``case`` (ns per iteration), after its untimed preparation; the
    deltas of its pool's counters over the timed loop are added to ``case.pool``."""
    with _around(case):
        _warm(case)
        if case.pool_mode is None:
            return case.run(case.iterations) / case.iterations
        before = pool_counters(case.pool_mode)
        elapsed = case.run(case.iterations)
        after = pool_counters(case.pool_mode)
    for name, value in after.items():
        case.pool[name] = case.pool.get(name, 0) + value - before[name]
    case.pool_iterations += case.iterations
    return elapsed / case.iterations


def measure(
    cases: list[Case], rounds: int, sample_s: float, busy: BusyWriter, seed: int, deadline: float
) -> tuple[list[float], list[float]]:
    """Calibrate, then take one sample per case per round.

    Each round visits the blocks (cases on the same memory) in a shuffled order and the
    cases of a block in a shuffled order, after one untimed iteration that warms the
    block's page tables and caches: otherwise whichever case came first after another
    region would pay for faulting them back in, at 64 MiB and more a steady 10-25 %.
    Each sample also runs its case's own preparation first, untimed (:func:`sample`: a
    virtual key takes its number back, a working set reaches its steady state).
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
                    with _around(case):
                        _warm(case)
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
                    with _around(order[0]):  # the untimed iteration, in the case's setting
                        _warm(order[0])
                        order[0].run(1)
                    for case in order:
                        case.samples.append(sample(case))
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
    #: the median over rounds of each round's ratio (both nets from that round's samples):
    #: on a shared machine, a round that others slowed down slows both sides of its ratio
    paired: float | None = None


def _paired(case: Case, floor: Case, loops: Mapping[int, list[float]]) -> float | None:
    def nets(c: Case) -> list[float]:
        if c.native or c.slug == "floor.loop":
            return c.samples
        return [x - loop for x, loop in zip(c.samples, loops[c.threads], strict=False)]

    ratios = [a / b for a, b in zip(nets(case), nets(floor), strict=False) if b > 0]
    return statistics.median(ratios) if ratios else None


def summarize(cases: list[Case]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    loop_samples = {c.threads: c.samples for c in cases if c.slug == "floor.loop"}
    loops = {t: statistics.median(samples) for t, samples in loop_samples.items()}
    for c in cases:
        med = statistics.median(c.samples)
        net = med if c.native or c.slug == "floor.loop" else med - loops[c.threads]
        rows[c.id] = Row(c, med, min(c.samples), net)
    for row in rows.values():
        floor = rows.get(row.case.floor) if row.case.floor else None
        if floor is not None and floor.net > 0:
            row.ratio = row.net / floor.net
        if floor is not None and len(row.case.samples) == len(floor.case.samples):
            row.paired = _paired(row.case, floor.case, loop_samples)
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


def _family(
    ratio: Ratio,
    rows: Mapping[str, Row],
    backend: str,
    sizes: Sequence[int],
    miss_sizes: Sequence[int] = (),
) -> dict[str, float]:
    """The values of one :class:`specs.Ratio`, for every size and thread count it covers."""
    scope_of = {spec.slug: spec.scope for spec in _specs(backend)}
    terms = [
        (-1.0 if t.startswith("-") else 1.0, resolve(t.lstrip("-"), backend), part)
        for part, ts in (("num", ratio.num), ("den", ratio.den))
        for t in ts
    ]
    scopes = {scope_of.get(slug) for _, slug, _ in terms}
    if None in scopes:
        return {}  # a case that this backend does not run
    threads = (1,) if scopes <= _ONE_THREAD else (1, 2)
    where: Sequence[int | None] = (
        sizes if "size" in scopes else miss_sizes if "miss" in scopes else (None,)
    )
    out: dict[str, float] = {}
    for t in threads:
        for size in where:
            sums = {"num": 0.0, "den": 0.0}
            for sign, slug, part in terms:
                row = rows.get(_instance_id(scope_of[slug], slug, t, size))
                if row is None:
                    break
                sums[part] += sign * row.net
            else:
                if ratio.den and sums["den"] <= 0:
                    continue
                key = ratio.key.format(size=size_label(size), threads=t)
                out[key] = sums["num"] / sums["den"] if ratio.den else sums["num"]
    return out


def goals(
    rows: Mapping[str, Row], backend: str, sizes: Sequence[int], miss_sizes: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Every goal of :data:`specs.GOALS`, judged on this run."""
    out: list[dict[str, Any]] = []
    for goal in GOALS:
        entry: dict[str, Any] = {
            "id": goal.id,
            "goal": goal.text,
            "compare": goal.compare,
            "threshold": goal.threshold,
            "unit": goal.unit,
            "reads": list(goal.reads),
        }
        if backend not in goal.backends:
            out.append({**entry, "values": {}, "status": "n/a", "note": goal.na_note})
            continue
        values: dict[str, float] = {}
        notes: list[str] = []
        for ratio in goal.values:
            if backend in ratio.backends:
                values.update(_family(ratio, rows, backend, sizes, miss_sizes))
                notes += [ratio.note] if ratio.note else []
        if goal.combine == "spread" and values:
            low = min(values.values())
            values = {"max/min": max(values.values()) / low if low > 0 else float("inf")}
        ok = (
            None
            if not values
            else all(
                v <= goal.threshold if goal.compare == "<=" else v >= goal.threshold
                for v in values.values()
            )
        )
        note = "; ".join([*notes, goal.note] if goal.note else notes)
        out.append({**entry, "values": values, "status": _status(ok), "note": note})
    return out


def pool_summary(case: Case) -> dict[str, Any] | None:
    """A case's pool counters over its timed samples: totals, per 1,000 switches, hit rate."""
    if case.pool_mode is None:
        return None
    counts = dict(case.pool)
    switches = counts.get("switches", 0)
    entries = counts.get("hits", 0) + counts.get("misses", 0)
    return {
        "pool": "sim" if case.pool_mode == _core.MODE_SIM else "pku",
        "iterations": case.pool_iterations,
        "counts": counts,
        "per_1000_switches": {
            name: 1000 * value / switches for name, value in counts.items() if name != "switches"
        }
        if switches
        else {},
        "hit_rate": counts.get("hits", 0) / entries if entries else None,
    }


def to_json(
    machine: dict[str, Any],
    config: dict[str, Any],
    rows: dict[str, Row],
    over: list[dict[str, Any]],
    goal_list: list[dict[str, Any]],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "schema": 3,
        "machine": machine,
        "config": config,
        "cases": [
            {
                "id": r.case.id,
                "slug": r.case.slug,
                "label": r.case.label,
                "group": r.case.group,
                "threads": r.case.threads,
                "size": r.case.size,
                "keys": r.case.keys,
                "native": r.case.native,
                "floor": r.case.floor,
                "iterations": r.case.iterations,
                "samples_ns": r.case.samples,
                "median_ns": r.median,
                "min_ns": r.minimum,
                "net_ns": r.net,
                "ratio": r.ratio,
                "ratio_paired": r.paired,
                "pool": pool_summary(r.case),
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
    ("secret", "secrets: memfd_secret against private mmap"),
    ("vkey", "virtual keys"),
    ("keys", "costs with many keys open"),
)


def _where(c: dict[str, Any]) -> str:
    return f"{c['keys']} keys" if c.get("keys") is not None else size_label(c["size"])


def _per_1000(c: dict[str, Any], name: str) -> str:
    pool = c.get("pool") or {}
    per = pool.get("per_1000_switches") or {}
    return f"{per[name]:.0f}" if name in per else "-"


def render_vkeys(data: dict[str, Any], out: TextIO) -> None:
    """The virtual-key rows as three summaries: hit, miss per size, working sets."""
    cases = data["cases"]
    by_id = {c["id"]: c for c in cases}
    hits = [c for c in cases if c["slug"].startswith("vkey.hit") or c["slug"] == "vkey.pinned_pku"]
    if hits:
        print("\n## virtual keys: a hit, against the same line with no pool (ns net)", file=out)
        print(
            f"{'case':<56}{'threads':>8}{'net':>10}{'floor':>10}{'x floor':>9}"
            f"{'paired':>9}  (paired: median of the rounds' own ratios)",
            file=out,
        )
        for c in hits:
            floor = by_id.get(c["floor"]) if c["floor"] else None
            print(
                f"{c['label']:<56}{c['threads']:>8}{_ns(c['net_ns']):>10}"
                f"{_ns(floor['net_ns']) if floor else '-':>10}{_x(c['ratio']):>9}"
                f"{_x(c.get('ratio_paired')):>9}",
                file=out,
            )
    misses = [c for c in cases if c["slug"] in ("vkey.miss", "vkey.miss_pku")]
    if misses:
        print(
            "\n## virtual keys: a miss per region size (park the least recently used key, tag "
            "this one), against its two system calls in C",
            file=out,
        )
        print(
            f"{'pool':<6}{'size':>8}{'pages':>7}{'miss ns':>12}{'C pair ns':>12}{'x floor':>9}"
            f"{'misses':>8}{'evictions':>11}{'re-tags':>9}{'parks':>7}  (per 1,000 switches)",
            file=out,
        )
        for c in misses:
            floor = by_id.get(c["floor"]) if c["floor"] else None
            pool = (c.get("pool") or {}).get("pool", "-")
            print(
                f"{pool:<6}{size_label(c['size']):>8}{c['size'] // mmap.PAGESIZE:>7}"
                f"{_ns(c['net_ns']):>12}{_ns(floor['net_ns']) if floor else '-':>12}"
                f"{_x(c['ratio']):>9}{_per_1000(c, 'misses'):>8}{_per_1000(c, 'evictions'):>11}"
                f"{_per_1000(c, 'retags'):>9}{_per_1000(c, 'parks'):>7}",
                file=out,
            )
    sets = [c for c in cases if c.get("keys") is not None and c["group"] == "vkey"]
    if sets:
        print(
            "\n## virtual keys: working sets, 1 thread (steady state after "
            f"{data['config'].get('workset_warm', '?')} untimed switches; hot: "
            f"{data['config'].get('hot_share', 0) * 100:.0f}% of the switches over "
            f"{data['config'].get('hot_keys', '?')} keys; counts per 1,000 switches)",
            file=out,
        )
        print(
            f"{'pool':<6}{'pattern':<9}{'keys':>6}{'hit rate':>10}{'ns/switch':>11}"
            f"{'floor ns':>10}{'x floor':>9}{'allocs':>8}{'re-tags':>9}{'parks':>7}"
            f"{'evictions':>11}",
            file=out,
        )
        for c in sorted(sets, key=lambda c: (c["slug"], c["keys"])):
            floor = by_id.get(c["floor"]) if c["floor"] else None
            pool = c.get("pool") or {}
            rate = pool.get("hit_rate")
            pattern = "hot" if "_hot" in c["slug"] else "uniform"
            print(
                f"{pool.get('pool', '-'):<6}{pattern:<9}{c['keys']:>6}"
                f"{f'{rate * 100:.1f}%' if rate is not None else '-':>10}"
                f"{_ns(c['net_ns']):>11}{_ns(floor['net_ns']) if floor else '-':>10}"
                f"{_x(c['ratio']):>9}{_per_1000(c, 'allocs'):>8}{_per_1000(c, 'retags'):>9}"
                f"{_per_1000(c, 'parks'):>7}{_per_1000(c, 'evictions'):>11}",
                file=out,
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
    head = (
        f"{'case':<{width}}{'size':>10}{'median':>14}{'min':>14}{'net':>14}{'x floor':>11}  floor"
    )
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
                    f"{c['label']:<{width}}{_where(c):>10}"
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
                    f"{what:<{width}}{size_label(d['size']):>10}{'':>28}{_ns(d['net_ns']):>14}"
                    f"{_x(d['ratio']):>11}  {by_id[d['floor']]['label']}",
                    file=out,
                )
    render_vkeys(data, out)
    print("\n## goals", file=out)
    show: dict[str, Callable[[float], str]] = {
        "%": lambda v: f"{v * 100:.0f}%",
        "ns": lambda v: f"{v:.1f} ns",
        "x": _x,
    }
    for g in data["goals"]:
        vals = [f"{k}: {show[g['unit']](v)}" for k, v in g["values"].items()]
        print(f"[{g['status']}] {g['id']}: {g['goal']}", file=out)
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


def run(
    mode: Mode,
    *,
    rounds: int | None = None,
    pin: bool = True,
    groups: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return the JSON-ready results (``groups``: only the rows of
    those groups, with their floors)."""
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
    plan = build(mode, backend, gib_ok=gib_ok, groups=groups)
    try:
        busy = BusyWriter(_BUSY_BYTES, busy_cpu)
        try:
            with _pinned(main_cpu), _gc_off():
                others, stolen = measure(
                    plan.cases, n_rounds, mode.sample_s, busy, seed, started + mode.budget_s
                )
        finally:
            busy.close()
        # The pools with every fixture alive: numbers held, logical keys, parked ones.
        pools = {
            "sim": dict(_core._pool_stats(_core.MODE_SIM)),
            "backend": dataclasses.asdict(active_backend().keys),
        }
    finally:
        plan.fixtures.close()
    rows = summarize(plan.cases)
    over = derived(rows)
    sizes = sorted({c.size for c in plan.cases if c.group == "switch" and c.size is not None})
    miss_sizes = sorted({c.size for c in plan.cases if c.scope == "miss" and c.size is not None})
    worksets = sorted({c.keys for c in plan.cases if c.keys is not None})
    goal_list = goals(rows, backend, sizes, miss_sizes)
    config = {
        "mode": mode.name,
        "rounds": len(others),
        "other_cpus_mean": statistics.fmean(others),
        "other_cpus_per_round": others,
        "stolen_cpus_per_round": stolen,
        "sample_s": mode.sample_s,
        "sizes": sizes,
        "bulk_bytes": mode.bulk_bytes,
        "miss_sizes": miss_sizes,
        "miss_keys": MISS_KEYS,
        "worksets": worksets,
        "workset_sequence": mode.sequence,
        "workset_warm": WORKSET_WARM,
        "hot_keys": HOT_KEYS,
        "hot_share": HOT_SHARE,
        "groups": sorted(groups) if groups is not None else None,
        "pools_end": pools,
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
    known = sorted({spec.group for spec in CASES})
    parser.add_argument(
        "--groups",
        metavar="G,G",
        help=f"only the rows of these groups, with their floors ({', '.join(known)})",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    groups: frozenset[str] | None = None
    if args.groups is not None:
        groups = frozenset(g.strip() for g in args.groups.split(",") if g.strip())
        if not groups or not groups <= set(known):
            parser.error(f"--groups: choose from {', '.join(known)}")
        if args.plot and "switch" not in groups:
            parser.error("--plot draws the switch rows: add the group 'switch'")
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
    data = run(
        MODES["quick" if args.quick else "default"],
        rounds=args.rounds,
        pin=not args.no_pin,
        groups=groups,
    )
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
