"""The benchmark's cases and goals, as data.

A **case** is one timed operation.  Its row says what is timed (a Python statement over named
fixtures, or a C loop of :mod:`pkeyguard_bench._floor`), which group of the table it belongs
to, which case it is divided by (its *floor*), how often it is instantiated (``scope``) and on
which backend it runs.  The run expands the rows into case ids ``SLUG[@SIZE]/Nt``: ``thread``
rows once per thread count (1 and 2), ``size`` rows once per region size and thread count,
``scalar`` and ``bulk`` rows once, with one thread (``bulk`` rows carry the bulk size).

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

Scope = Literal["thread", "size", "scalar", "bulk"]
Backend = Literal["pku", "mprotect"]

ANY: frozenset[Backend] = frozenset({"pku", "mprotect"})
PKU: frozenset[Backend] = frozenset({"pku"})
MPROTECT: frozenset[Backend] = frozenset({"mprotect"})

#: A floor that names the hardware operation of a switch, whichever backend runs.
HW = "hw"
HARDWARE_FLOOR: dict[Backend, str] = {"mprotect": "floor.mprotect_c", "pku": "floor.wrpkru_pair"}


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
class CaseSpec:
    slug: str
    label: str  # ``{bulk}`` is replaced by the bulk size
    group: Literal["floor", "switch", "alt", "scalar", "bulk", "secret"]
    timing: Py | Native
    floor: str | None = None  # slug (or HW); same threads, and same size where both have one
    scope: Scope = "thread"
    backends: frozenset[Backend] = ANY

    @property
    def fixtures(self) -> tuple[str, ...]:
        t = self.timing
        return tuple(f for _, f in t.names) if isinstance(t, Py) else t.args


_C_MPROTECT_PAIR = Native(
    "mprotect_pairs", ("region.address", "region.length", "prot.first", "prot.second")
)
_C_MPROTECT_LABEL = "C loop: mprotect pair on the same pages"

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
        "floor.mprotect_c", _C_MPROTECT_LABEL, "alt", _C_MPROTECT_PAIR, scope="size", backends=PKU
    ),
    CaseSpec(
        "switch.guard",
        "with g: (reused guard)",
        "switch",
        py("with g: pass", g="region.guard"),
        floor=HW,
        scope="size",
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
        py("with s.reveal() as b: x = b[0]", s="secret.mmap"),
        scope="scalar",
    ),
    CaseSpec(
        "secret.reveal_memfd",
        "with s.reveal() as b: b[0]: memfd_secret",
        "secret",
        py("with s.reveal() as b: x = b[0]", s="secret.memfd"),
        floor="secret.reveal_mmap",
        scope="scalar",
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
