"""The benchmark's cases and goals, as data.

A **case** is one timed operation.  Its row says what is timed (a Python statement over named
fixtures, or a C loop of :mod:`pkeyguard_bench._floor`), which group of the table it belongs
to, which case it is divided by (its *floor*), how often it is instantiated (``scope``) and on
which backend it runs.  The run expands the rows into case ids ``SLUG[@SIZE]/Nt``: ``thread``
rows once per thread count (1 and 2), ``size`` rows once per region size and thread count,
``scalar`` and ``bulk`` rows once, with one thread (``bulk`` rows carry the bulk size),
``miss`` rows once per miss region size and ``workset`` rows once per working-set size
(:data:`WORKING_SETS`; ids ``SLUG@NkeysS/1t``), both with one thread.

Virtual keys (issue 11): a row may name a :class:`Warm` statement, run untimed before each
sample (a virtual key that another case evicted takes its number back there, so the timed
loop sees the steady state), a context manager fixture held ``around`` each sample, and the
key pool whose counters it reports (``counts``: the simulated pool, ``MODE_SIM``, or the
active backend's where it has one): the deltas of ``_core._pool_stats`` over the timed
samples go into the JSON with the case.

A **goal** is a threshold on values computed from the cases' net times.  Each value is a
:class:`Ratio`: the summed nets of ``num`` (a leading ``-`` subtracts one) over the summed
nets of ``den`` (no ``den``: the value is the numerator in ns), for every size and thread
count where all the cases it reads were run.  Nothing here matches labels or goal text: the
labels are for people, the ids are for code and for the JSON.

The fixtures that rows name are built by :func:`pkeyguard_bench.bench.build`; see there for
what each one is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["thread", "size", "scalar", "bulk", "miss", "workset"]
Pool = Literal["sim", "backend"]
Backend = Literal["pku", "mprotect"]

ANY: frozenset[Backend] = frozenset({"pku", "mprotect"})
PKU: frozenset[Backend] = frozenset({"pku"})
MPROTECT: frozenset[Backend] = frozenset({"mprotect"})

#: A floor that names the hardware operation of a switch, whichever backend runs.
HW = "hw"
HARDWARE_FLOOR: dict[Backend, str] = {"mprotect": "floor.mprotect_c", "pku": "floor.wrpkru_pair"}


#: Working-set sizes (logical keys) of the ``workset`` rows, and their access patterns:
#: ``hot`` sends HOT_SHARE of the switches to the first HOT_KEYS keys (a hot set that fits in
#: the 15 numbers) and the rest to the others; ``uniform`` picks any key with equal chance.
WORKING_SETS: tuple[int, ...] = (1, 8, 15, 16, 64, 1000)
PATTERNS: tuple[Literal["hot", "uniform"], ...] = ("hot", "uniform")
HOT_KEYS = 12
HOT_SHARE = 0.8
#: Untimed switches before each working-set sample (the pool reaches its steady state).
WORKSET_WARM = 256
#: Keys cycled by the miss rows: one more than the pool's 15 numbers, so that with LRU every
#: entry evicts the key that is entered next.
MISS_KEYS = 16


def resolve(slug: str, backend: str) -> str:
    """``slug``, or the hardware floor of ``backend`` for :data:`HW`."""
    return HARDWARE_FLOOR["pku" if backend == "pku" else "mprotect"] if slug == HW else slug


@dataclass(frozen=True)
class Py:
    """A Python statement, timed in a timeit-style loop with fixtures bound as fast locals.

    ``names`` pairs each local name with the fixture bound to it.  ``view`` holds the guard
    bound as ``g`` open around the whole loop, with ``v = g.mut_ref_guard()`` (``"value"``)
    or ``m = memoryview(g.mut_ref_guard())`` (``"memoryview"``) bound inside it.
    """

    stmt: str
    names: tuple[tuple[str, str], ...] = ()
    view: Literal["", "value", "memoryview"] = ""


@dataclass(frozen=True)
class Native:
    """A C loop that times itself: ``_floor.<fn>(*fixtures, n) -> ns``."""

    fn: str
    args: tuple[str, ...] = ()


def py(stmt: str, view: Literal["", "value", "memoryview"] = "", **names: str) -> Py:
    return Py(stmt, tuple(names.items()), view)


@dataclass(frozen=True)
class Warm:
    """A statement run ``times`` times, untimed, before each sample (on ``backends``)."""

    timing: Py
    times: int = 1
    backends: frozenset[Backend] = ANY


@dataclass(frozen=True)
class CaseSpec:
    slug: str
    label: str  # ``{bulk}`` is replaced by the bulk size
    group: Literal["floor", "switch", "alt", "scalar", "bulk", "secret", "vkey", "keys"]
    timing: Py | Native
    floor: str | None = None  # slug (or HW); same threads, and same size where both have one
    scope: Scope = "thread"
    backends: frozenset[Backend] = ANY
    warm: Warm | None = None
    around: str | None = None  # fixture: a callable returning a context manager
    counts: Pool | None = None  # the key pool whose counters the JSON reports for this case

    @property
    def fixtures(self) -> tuple[str, ...]:
        t = self.timing
        own = tuple(f for _, f in t.names) if isinstance(t, Py) else t.args
        warm = tuple(f for _, f in self.warm.timing.names) if self.warm else ()
        return own + warm + ((self.around,) if self.around else ())


_C_MPROTECT_PAIR = Native(
    "mprotect_pairs", ("region.address", "region.length", "prot.first", "prot.second")
)
_C_MPROTECT_LABEL = "C loop: mprotect pair on the same pages"
# On pku every NoAccess key is virtual: a case of the other groups whose key another case
# evicted takes its number back before its sample, so that no timed loop pays a re-tag.
_REGION_WARM_PKU = Warm(py("with g: pass", g="region.guard"), backends=PKU)
_SIM_WARM = Warm(py("with g: pass", g="sim.guard"))
_REVEAL_MMAP = py("with s.reveal() as b: x = b[0]", s="secret.mmap")
_REVEAL_MEMFD = py("with s.reveal() as b: x = b[0]", s="secret.memfd")
_MISS = py("with nx(): pass", nx="miss.sim")
_MISS_PKU = py("with nx(): pass", nx="miss.pku")
# The first isolated() after the keys are made also pays for their fresh memory (2-3x the
# steady cost): two untimed blocks first, so that both sides of the growth ratio time the same
# steady state, whatever number of iterations a sample runs (one at 10,000 keys in --quick).
_ISOLATED_WARM = Warm(py("with iso(): pass", iso="isolated"), times=2)

CASES: tuple[CaseSpec, ...] = (
    # Once per thread count.
    CaseSpec("floor.loop", "empty loop iteration (timeit overhead)", "floor", py("pass")),
    CaseSpec(
        "floor.nop_cm",
        "with C guard on a MODE_NOP key (empty C CM)",
        "floor",
        py("with g: pass", g="nop_guard"),
    ),
    CaseSpec("floor.rdpkru", "C loop: RDPKRU", "floor", Native("rdpkru_loop"), backends=PKU),
    CaseSpec(
        "floor.wrpkru_pair",
        "C loop: (RDPKRU, WRPKRU) x2, as a guard pair does",
        "floor",
        Native("wrpkru_pairs", ("first.pkey",)),
        backends=PKU,
    ),
    CaseSpec(
        "alt.pkey_set",
        "ctypes glibc pkey_set(k, 0); pkey_set(k, AD)",
        "alt",
        py("ps(k, 0); ps(k, 1)", ps="libc.pkey_set", k="first.pkey"),
        floor="floor.wrpkru_pair",
        backends=PKU,
    ),
    CaseSpec(
        "switch.no_syscall",
        "with C guard on a MODE_MPROTECT key with no regions",
        "switch",
        py("with g: pass", g="no_syscall_guard"),
        floor="floor.nop_cm",
        backends=MPROTECT,
    ),
    CaseSpec(
        "switch.lookup",
        "assoc.set_access_rights(ReadWrite) alone (no with)",
        "switch",
        py("x = assoc.set_access_rights(P.ReadWrite)", assoc="first.assoc", P="PkeyPermissions"),
        floor="floor.nop_cm",
    ),
    # What CPython itself charges for the shape of 'with assoc.set_access_rights(P.RW):'
    # around the empty C CM: the cheapest C method call that returns the CM (dict.get), and
    # the cheapest class attribute (a plain class, metaclass type).
    CaseSpec(
        "floor.call_cm",
        "with d.get(k): on a dict holding the empty C CM (a C method call)",
        "floor",
        py("with d.get(k): pass", d="call.table", k="call.key"),
        floor="floor.nop_cm",
    ),
    CaseSpec(
        "floor.class_attr",
        "K.a on a plain class (class attribute)",
        "floor",
        py("x = K.a", K="plain.class"),
        floor="floor.nop_cm",
    ),
    CaseSpec(
        "switch.enum_attr",
        "PkeyPermissions.ReadWrite (enum attribute)",
        "switch",
        py("x = P.ReadWrite", P="PkeyPermissions"),
        floor="floor.nop_cm",
    ),
    # Once per region size and thread count.  On pku the pages stay RW across a switch, so
    # the mprotect pair is an alternative there (NONE then RW), not the switch's floor.
    CaseSpec(
        "floor.mprotect_c",
        _C_MPROTECT_LABEL,
        "floor",
        _C_MPROTECT_PAIR,
        scope="size",
        backends=MPROTECT,
    ),
    CaseSpec(
        "floor.mprotect_c",
        _C_MPROTECT_LABEL,
        "alt",
        _C_MPROTECT_PAIR,
        scope="size",
        backends=PKU,
        warm=_REGION_WARM_PKU,
    ),
    CaseSpec(
        "switch.guard",
        "with g: (reused guard)",
        "switch",
        py("with g: pass", g="region.guard"),
        floor=HW,
        scope="size",
        warm=_REGION_WARM_PKU,
    ),
    CaseSpec(
        "switch.set_access_rights",
        "with assoc.set_access_rights(ReadWrite):",
        "switch",
        py(
            "with assoc.set_access_rights(P.ReadWrite): pass",
            assoc="region.assoc",
            P="PkeyPermissions",
        ),
        floor=HW,
        scope="size",
        warm=_REGION_WARM_PKU,
    ),
    CaseSpec(
        "alt.mprotect_ext",
        "Python: C-extension mprotect(...) x2 (no guard)",
        "alt",
        py(
            "mp(a, n, p1); mp(a, n, p2)",
            mp="floor.mprotect",
            a="region.address",
            n="region.length",
            p1="prot.first",
            p2="prot.second",
        ),
        floor="floor.mprotect_c",
        scope="size",
        warm=_REGION_WARM_PKU,
    ),
    CaseSpec(
        "alt.mprotect_ctypes",
        "ctypes libc.mprotect pair",
        "alt",
        py(
            "mp(a, n, p1); mp(a, n, p2)",
            mp="libc.mprotect",
            a="region.address",
            n="region.length",
            p1="prot.first",
            p2="prot.second",
        ),
        floor="floor.mprotect_c",
        scope="size",
        warm=_REGION_WARM_PKU,
    ),
    # Scalar access, one thread: a c_uint32 view against memoryview element access.
    CaseSpec(
        "scalar.mv_typed_read",
        "x = mv.cast('I')[0] (memoryview)",
        "scalar",
        py("x = m[0]", m="mv.u32"),
        scope="scalar",
    ),
    CaseSpec(
        "scalar.mv_typed_write",
        "mv.cast('I')[0] = 1 (memoryview)",
        "scalar",
        py("m[0] = 1", m="mv.u32"),
        scope="scalar",
    ),
    CaseSpec(
        "scalar.mv_read",
        "x = mv[0] (memoryview, format B)",
        "scalar",
        py("x = m[0]", m="mv.u8"),
        floor="scalar.mv_typed_read",
        scope="scalar",
    ),
    CaseSpec(
        "scalar.mv_write",
        "mv[0] = 1 (memoryview, format B)",
        "scalar",
        py("m[0] = 1", m="mv.u8"),
        floor="scalar.mv_typed_write",
        scope="scalar",
    ),
    CaseSpec(
        "scalar.view_read",
        "x = v.value (c_uint32 view)",
        "scalar",
        py("x = v.value", "value", g="scalar.guard"),
        floor="scalar.mv_typed_read",
        scope="scalar",
    ),
    CaseSpec(
        "scalar.view_write",
        "v.value = 1 (c_uint32 view)",
        "scalar",
        py("v.value = 1", "value", g="scalar.guard"),
        floor="scalar.mv_typed_write",
        scope="scalar",
    ),
    # Bulk copies, one thread.  A bytearray's data starts 16 bytes into a page, and memcpy
    # between two of them is measurably slower than to or from page-aligned memory, so the
    # plain copies are measured both ways.
    CaseSpec(
        "bulk.plain_copy",
        "plain copy {bulk}: dst_mv[:] = src_mv (two bytearrays)",
        "bulk",
        py("d[:] = s", d="bulk.dst_mv", s="bulk.src_mv"),
        scope="bulk",
    ),
    CaseSpec(
        "bulk.plain_copy_in",
        "plain copy {bulk}: bytearray -> page-aligned mmap",
        "bulk",
        py("d[:] = s", d="bulk.aligned", s="bulk.src_mv"),
        floor="bulk.plain_copy",
        scope="bulk",
    ),
    CaseSpec(
        "bulk.plain_copy_out",
        "plain copy {bulk}: page-aligned mmap -> bytearray",
        "bulk",
        py("d[:] = s", d="bulk.dst_mv", s="bulk.aligned"),
        floor="bulk.plain_copy",
        scope="bulk",
    ),
    CaseSpec(
        "bulk.plain_bytes",
        "plain bytes(bytearray) {bulk}",
        "bulk",
        py("x = bytes(s)", s="bulk.src"),
        scope="bulk",
    ),
    CaseSpec(
        "bulk.copy_in_mv",
        "copy in {bulk}: memoryview(view)[:] = src_mv",
        "bulk",
        py("m[:] = s", "memoryview", g="bulk.guard", s="bulk.src_mv"),
        floor="bulk.plain_copy",
        scope="bulk",
    ),
    CaseSpec(
        "bulk.copy_in_value",
        "copy in {bulk}: view.value = src_mv",
        "bulk",
        py("v.value = s", "value", g="bulk.guard", s="bulk.src_mv"),
        floor="bulk.plain_copy",
        scope="bulk",
    ),
    CaseSpec(
        "bulk.copy_out_mv",
        "copy out {bulk}: dst_mv[:] = memoryview(view)",
        "bulk",
        py("d[:] = m", "memoryview", g="bulk.guard", d="bulk.dst_mv"),
        floor="bulk.plain_copy",
        scope="bulk",
    ),
    CaseSpec(
        "bulk.copy_out_bytes",
        "copy out {bulk}: bytes(view)",
        "bulk",
        py("x = bytes(v)", "value", g="bulk.guard"),
        floor="bulk.plain_bytes",
        scope="bulk",
    ),
    # Secrets, one thread: memfd_secret memory against private mmap memory (each case's floor
    # is the same operation on the other backing).  A cycle maps, tags, wipes and unmaps.
    CaseSpec(
        "secret.cycle_mmap",
        "Secret(32) + close(): private mmap",
        "secret",
        py("s = S(32, allocator=a); s.close()", S="Secret", a="secure.mmap"),
        scope="scalar",
    ),
    CaseSpec(
        "secret.cycle_memfd",
        "Secret(32) + close(): memfd_secret",
        "secret",
        py("s = S(32, allocator=a); s.close()", S="Secret", a="secure.memfd"),
        floor="secret.cycle_mmap",
        scope="scalar",
    ),
    CaseSpec(
        "secret.reveal_mmap",
        "with s.reveal() as b: b[0]: private mmap",
        "secret",
        _REVEAL_MMAP,
        scope="scalar",
        warm=Warm(_REVEAL_MMAP, backends=PKU),
    ),
    CaseSpec(
        "secret.reveal_memfd",
        "with s.reveal() as b: b[0]: memfd_secret",
        "secret",
        _REVEAL_MEMFD,
        floor="secret.reveal_mmap",
        scope="scalar",
        warm=Warm(_REVEAL_MEMFD, backends=PKU),
    ),
    # Each Secret has its own key (issue 11): revealing one opens that one only, so its cost
    # no longer depends on how many secrets are alive (it was 64x from 1 to 100 on mprotect).
    CaseSpec(
        "secret.reveal_mmap_100",
        "the same, private mmap, 100 secrets alive",
        "secret",
        _REVEAL_MMAP,
        floor="secret.reveal_mmap",
        scope="scalar",
        warm=Warm(_REVEAL_MMAP),
        around="secrets.100_alive",
    ),
    # Virtual keys (issue 11).  A hit: a switch on a virtual key that holds a hardware number,
    # in the simulated pool (MODE_SIM: PKRU is a thread-local variable, so no system call and
    # no WRPKRU), against the same line on a MODE_NOP key (no pool, no hardware).
    CaseSpec(
        "floor.nop_sar",
        "with assoc.set_access_rights(ReadWrite): on a MODE_NOP key's region",
        "floor",
        py(
            "with assoc.set_access_rights(P.ReadWrite): pass",
            assoc="nop.assoc",
            P="PkeyPermissions",
        ),
        floor="floor.nop_cm",
    ),
    CaseSpec(
        "vkey.hit_guard",
        "sim: with g: on a virtual key holding a number (hit)",
        "vkey",
        py("with g: pass", g="sim.guard"),
        floor="floor.nop_cm",
        warm=_SIM_WARM,
        counts="sim",
    ),
    CaseSpec(
        "vkey.hit_set_access_rights",
        "sim: with assoc.set_access_rights(ReadWrite): (hit)",
        "vkey",
        py(
            "with assoc.set_access_rights(P.ReadWrite): pass",
            assoc="sim.assoc",
            P="PkeyPermissions",
        ),
        floor="floor.nop_sar",
        warm=_SIM_WARM,
        counts="sim",
    ),
    # The same on real keys: a virtual key's hit against a pinned key (created with rights,
    # so it keeps its number for life: the switch as it was before virtual keys).
    CaseSpec(
        "vkey.pinned_pku",
        "pku: with g: on a pinned key (no pool decision)",
        "vkey",
        py("with g: pass", g="pinned.guard"),
        floor="floor.nop_cm",
        backends=PKU,
        counts="backend",
    ),
    CaseSpec(
        "vkey.hit_pku",
        "pku: with g: on a virtual key holding a number (hit)",
        "vkey",
        py("with g: pass", g="pku.guard"),
        floor="vkey.pinned_pku",
        backends=PKU,
        warm=Warm(py("with g: pass", g="pku.guard")),
        counts="backend",
    ),
    # A miss, per region size: MISS_KEYS keys cycled through 15 numbers, so every entry parks
    # the least recently used key (mprotect PROT_NONE of its pages) and tags this one (sim:
    # mprotect to its rights; pku: pkey_mprotect).  Its floor is those two system calls in C,
    # in the same order on regions mapped alike (next to each other: a park splits the
    # anonymous mapping the kernel merged them into, a re-tag merges it again).
    CaseSpec(
        "floor.retag_c",
        "C loop: a miss's mprotect pair, over 16 regions with no key",
        "floor",
        Native("mprotect_cycle", ("retag.addresses", "retag.length")),
        scope="miss",
    ),
    CaseSpec(
        "vkey.miss",
        "sim: with g: on the next of 16 keys over 15 numbers (miss)",
        "vkey",
        _MISS,
        floor="floor.retag_c",
        scope="miss",
        warm=Warm(_MISS, MISS_KEYS),
        counts="sim",
    ),
    CaseSpec(
        "vkey.miss_pku",
        "pku: with g: on the next of 16 keys over the numbers (miss)",
        "vkey",
        _MISS_PKU,
        floor="floor.retag_c",
        scope="miss",
        backends=PKU,
        warm=Warm(_MISS_PKU, MISS_KEYS),
        counts="backend",
    ),
    # Working sets: a fixed pseudo-random sequence of guards (one page each) per size and
    # pattern, entered in turn; the floor is the same sequence over MODE_NOP guards.
    *(
        case
        for pattern in PATTERNS
        for case in (
            CaseSpec(
                f"floor.ws_{pattern}",
                f"with g: over a {pattern} sequence of MODE_NOP guards",
                "floor",
                py("with nx(): pass", nx=f"ws.{pattern}.nop"),
                scope="workset",
            ),
            CaseSpec(
                f"vkey.ws_{pattern}",
                f"sim: with g: over a {pattern} sequence of virtual keys",
                "vkey",
                py("with nx(): pass", nx=f"ws.{pattern}.sim"),
                floor=f"floor.ws_{pattern}",
                scope="workset",
                warm=Warm(py("with nx(): pass", nx=f"ws.{pattern}.sim"), WORKSET_WARM),
                counts="sim",
            ),
            CaseSpec(
                f"vkey.ws_{pattern}_pku",
                f"pku: with g: over a {pattern} sequence of virtual keys",
                "vkey",
                py("with nx(): pass", nx=f"ws.{pattern}.pku"),
                floor=f"floor.ws_{pattern}",
                scope="workset",
                backends=PKU,
                warm=Warm(py("with nx(): pass", nx=f"ws.{pattern}.pku"), WORKSET_WARM),
                counts="backend",
            ),
        )
    ),
    # Costs that must not grow with the number of keys (issue 18): isolated() closes every
    # open key (O(keys) in all, not a walk of the growing stack per key), and a view access
    # inside isolated(allow=[k]) is O(1) (not a walk over every other key's guard).  Each
    # pair runs side by side in one run, with 1,000 and 10,000 keys open (no regions), made
    # around each sample; the goals hold 10x the keys to at most 12x the time.
    CaseSpec(
        "keys.isolated_1k",
        "with isolated(): pass, 1,000 keys open",
        "keys",
        py("with iso(): pass", iso="isolated"),
        scope="scalar",
        warm=_ISOLATED_WARM,
        around="keys.1k_open",
    ),
    CaseSpec(
        "keys.isolated_10k",
        "with isolated(): pass, 10,000 keys open",
        "keys",
        py("with iso(): pass", iso="isolated"),
        floor="keys.isolated_1k",
        scope="scalar",
        warm=_ISOLATED_WARM,
        around="keys.10k_open",
    ),
    CaseSpec(
        "keys.view_1k",
        "x = v.value inside isolated(allow=[k]), 1,000 other keys (h.v: the view)",
        "keys",
        py("x = h.v.value", h="keys.holder"),
        scope="scalar",
        around="keys.1k_view",
    ),
    CaseSpec(
        "keys.view_10k",
        "the same, 10,000 other keys",
        "keys",
        py("x = h.v.value", h="keys.holder"),
        floor="keys.view_1k",
        scope="scalar",
        around="keys.10k_view",
    ),
)


@dataclass(frozen=True)
class Ratio:
    """One family of goal values (see the module docstring).

    ``key`` names each value; ``{size}`` and ``{threads}`` are filled in per instance.
    """

    key: str
    num: tuple[str, ...]
    den: tuple[str, ...] = ()
    backends: frozenset[Backend] = ANY
    note: str = ""  # shown with the goal when this family applies


@dataclass(frozen=True)
class GoalSpec:
    id: str
    text: str
    compare: Literal["<=", ">="]
    threshold: float
    unit: Literal["x", "%", "ns"]  # how values print: ratio, percent (of a ratio), ns
    values: tuple[Ratio, ...]
    #: ``each``: every value against the threshold; ``spread``: max/min of the values
    combine: Literal["each", "spread"] = "each"
    backends: frozenset[Backend] = ANY
    note: str = ""
    na_note: str = ""  # why the goal does not apply on the other backend

    @property
    def reads(self) -> tuple[str, ...]:
        """The slugs this goal reads, in order, without repeats."""
        seen: dict[str, None] = {}
        for r in self.values:
            for slug in (*r.num, *r.den):
                seen.setdefault(slug.lstrip("-"), None)
        return tuple(seen)


_EACH = "{size} {threads}t"

GOALS: tuple[GoalSpec, ...] = (
    GoalSpec(
        "mprotect_pair",
        "mprotect switch pair <= 1.15x raw C mprotect pair on the same pages",
        "<=",
        1.15,
        "x",
        (Ratio(_EACH, ("switch.guard",), ("floor.mprotect_c",)),),
        backends=MPROTECT,
        na_note="pku backend: switches do not call mprotect",
    ),
    GoalSpec(
        "framework",
        "framework overhead (with g: minus hardware) <= 1.1x empty C CM",
        "<=",
        1.1,
        "x",
        (
            Ratio(
                "no-syscall switch {threads}t",
                ("switch.no_syscall",),
                ("floor.nop_cm",),
                backends=MPROTECT,
                note="on mprotect: the same switch path on a key with no regions, so no "
                "system call; subtracting a separately timed system call of microseconds "
                "per size (the JSON's 'derived' entries) is noise-dominated",
            ),
            Ratio(
                _EACH,
                ("switch.guard", "-floor.wrpkru_pair"),
                ("floor.nop_cm",),
                backends=PKU,
            ),
        ),
    ),
    GoalSpec(
        "framework_lookup",
        "framework overhead of with assoc.set_access_rights(RW): <= 1.3x empty C CM",
        "<=",
        1.3,
        "x",
        (
            Ratio(
                "no-syscall switch + lookup {threads}t",
                ("switch.no_syscall", "switch.lookup"),
                ("floor.nop_cm",),
                backends=MPROTECT,
            ),
            Ratio(
                _EACH,
                ("switch.set_access_rights", "-floor.wrpkru_pair"),
                ("floor.nop_cm",),
                backends=PKU,
            ),
        ),
        note="includes the guard lookup (a C method call and a fresh guard) and the enum attribute",
    ),
    GoalSpec(
        "framework_lookup_cpython",
        "with assoc.set_access_rights(RW): <= 1.3x CPython's cheapest equivalent (a C method "
        "call and a class attribute around the empty C CM)",
        "<=",
        1.3,
        "x",
        (
            Ratio(
                "no-syscall switch + lookup {threads}t",
                ("switch.no_syscall", "switch.lookup"),
                ("floor.call_cm", "floor.class_attr"),
                backends=MPROTECT,
            ),
            Ratio(
                _EACH,
                ("switch.set_access_rights", "-floor.wrpkru_pair"),
                ("floor.call_cm", "floor.class_attr"),
                backends=PKU,
            ),
        ),
        note="the floor CPython sets for framework_lookup: what any C context manager reached "
        "through a method call and a class attribute costs",
    ),
    GoalSpec(
        "scalar",
        "scalar view read/write <= 1.3x memoryview element access",
        "<=",
        1.3,
        "x",
        (
            Ratio("read vs x = mv.cast('I')[0]", ("scalar.view_read",), ("scalar.mv_typed_read",)),
            Ratio("read vs x = mv[0]", ("scalar.view_read",), ("scalar.mv_read",)),
            Ratio(
                "write vs mv.cast('I')[0] = 1", ("scalar.view_write",), ("scalar.mv_typed_write",)
            ),
            Ratio("write vs mv[0] = 1", ("scalar.view_write",), ("scalar.mv_write",)),
        ),
    ),
    GoalSpec(
        "bulk",
        "bulk copy >= 90% of the throughput of a plain copy",
        ">=",
        0.9,
        "%",
        (
            Ratio("copy_in_mv", ("bulk.plain_copy",), ("bulk.copy_in_mv",)),
            Ratio(
                "copy_in_mv vs page-aligned plain", ("bulk.plain_copy_in",), ("bulk.copy_in_mv",)
            ),
            Ratio("copy_in_value", ("bulk.plain_copy",), ("bulk.copy_in_value",)),
            Ratio(
                "copy_in_value vs page-aligned plain",
                ("bulk.plain_copy_in",),
                ("bulk.copy_in_value",),
            ),
            Ratio("copy_out_mv", ("bulk.plain_copy",), ("bulk.copy_out_mv",)),
            Ratio(
                "copy_out_mv vs page-aligned plain",
                ("bulk.plain_copy_out",),
                ("bulk.copy_out_mv",),
            ),
            Ratio("copy_out_bytes", ("bulk.plain_bytes",), ("bulk.copy_out_bytes",)),
        ),
        note="against two bytearrays, and against a plain copy with the region's alignment",
    ),
    GoalSpec(
        "vkey_hit",
        "virtual key hit <= 1.1x the non-virtual path (no-syscall: sim pool against MODE_NOP)",
        "<=",
        1.1,
        "x",
        (
            Ratio("with g: {threads}t", ("vkey.hit_guard",), ("floor.nop_cm",)),
            Ratio(
                "with g: vs the mprotect switch path {threads}t",
                ("vkey.hit_guard",),
                ("switch.no_syscall",),
                backends=MPROTECT,
                note="on mprotect also against the switch path of a key with no regions "
                "(switch.no_syscall): today's non-virtual switch with nothing to protect",
            ),
            Ratio(
                "with assoc.set_access_rights(RW): {threads}t",
                ("vkey.hit_set_access_rights",),
                ("floor.nop_sar",),
            ),
            Ratio(
                "pku with g: {threads}t",
                ("vkey.hit_pku",),
                ("vkey.pinned_pku",),
                backends=PKU,
                note="on pku also a virtual key's hit against a pinned key's switch",
            ),
        ),
        note="the floor does the same bookkeeping with no pool and no PKRU write, so the "
        "ratio is an upper bound of what a hit adds to a real WRPKRU switch",
    ),
    GoalSpec(
        "vkey_miss",
        "virtual key miss <= 1.15x its two system calls (park the victim, tag the key)",
        "<=",
        1.15,
        "x",
        (
            Ratio("sim {size}", ("vkey.miss",), ("floor.retag_c",)),
            Ratio("pku {size}", ("vkey.miss_pku",), ("floor.retag_c",), backends=PKU),
        ),
        note="the floor makes the same mprotect calls in C, on 16 regions with no key mapped "
        "the same way",
    ),
    GoalSpec(
        "keys_isolated_growth",
        "isolated() with 10x the keys open <= 12x the time (O(keys) in all)",
        "<=",
        12.0,
        "x",
        (Ratio("10,000 vs 1,000 keys", ("keys.isolated_10k",), ("keys.isolated_1k",)),),
        note="each entry finds its thread's guards on the key in O(1), not by walking the stack",
    ),
    GoalSpec(
        "keys_view_growth",
        "a view access inside isolated(allow=[k]) with 10x the other keys <= 1.5x the time",
        "<=",
        1.5,
        "x",
        (Ratio("10,000 vs 1,000 keys", ("keys.view_10k",), ("keys.view_1k",)),),
        note="O(1), so flat: the view's guard knows this thread's innermost guard on its key "
        "(a linear walk passes a 12x bound: 4-9x on a3e9ecf)",
    ),
    GoalSpec(
        "secret_reveal_flat",
        "reveal() with 100 secrets alive <= 1.15x with the benchmark's own 2",
        "<=",
        1.15,
        "x",
        (Ratio("100 alive vs 2", ("secret.reveal_mmap_100",), ("secret.reveal_mmap",)),),
        note="one key per Secret: a reveal opens that secret's pages only",
    ),
    GoalSpec(
        "pku_pair_ns",
        "pku: whole pair <= 50 ns (current Xeon)",
        "<=",
        50.0,
        "ns",
        (Ratio(_EACH, ("switch.guard",)),),
        backends=PKU,
        na_note="mprotect backend",
    ),
    GoalSpec(
        "pku_flat",
        "pku: whole pair flat within 10% across region sizes, 1 and 2 threads",
        "<=",
        1.10,
        "x",
        (Ratio(_EACH, ("switch.guard",)),),
        combine="spread",
        backends=PKU,
        na_note="mprotect backend",
    ),
)
