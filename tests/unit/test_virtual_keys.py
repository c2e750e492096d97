"""Virtual keys (issue 11) in the simulated mode: the pool of hardware numbers, checked
against a model after every step.

``pkeyguard._backend.SIMULATED`` makes keys of ``_core.MODE_SIM``: the core's virtual-key
pool with a thread-local "PKRU" (``_core._sim_pkru()``), "tagging" done with
``mprotect(region rights)`` and parking with ``mprotect(PROT_NONE)``.  It runs on any
machine, so the pool's logic (which logical key holds which number, least-recently-entered
eviction, nothing evicted under an opening guard, the two classes of numbers, never freed,
with keys created with initial rights never evicting, per-thread rights, KeyExhaustedError)
is checked here with thousands of examples; tests/hw repeats it on the real pku backend in
the PKU guest.

The model is checked against what the core says (``key.hardware_key``,
``key._thread_level()``, ``_core._pool_stats``) and against the OS: every region's page rights
in ``/proc/self/maps`` (``---p`` while its key is parked, the region's own rights while its
key holds a number).  Raw memory accesses are made only where the model says the pages are
readable or writable: parked pages really are ``PROT_NONE``, so a wrong model is a fault.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pkeyguard import (
    AccessPermissions,
    GuardOrderError,
    KeyExhaustedError,
    KeyStateError,
    PkeyGuard,
    PkeyPermissions,
    RegionError,
    RegionGuard,
    Secret,
    _backend,
    _core,
)
from pkeyguard.pkey import AccessGuard, AssociatedRegion
from tests.profiles import vk_state_examples
from tests.statemodel import (
    NONE,
    PKRU_BITS,
    READ,
    WRITE,
    OnThreads,
    Worker,
    bits_of,
    level_of_bits,
    prot_string,
)
from tests.support import join_os_thread, perms_at

R = TypeVar("R")

NA: Final = PkeyPermissions.NoAccess
RO: Final = PkeyPermissions.ReadOnly
RW: Final = PkeyPermissions.ReadWrite

LEVEL = {NA: NONE, RO: READ, RW: WRITE}
PERMISSION = {v: k for k, v in LEVEL.items()}
CLOSED = PKRU_BITS[NONE]
NUMBERS = range(1, 16)  # the simulated kernel's numbers
INIT_PKRU = 0x55555554  # every number but 0 access-disabled: a new thread's sim PKRU

COUNTERS = (
    "hits",
    "misses",
    "evictions",
    "retags",
    "parks",
    "allocs",
    "exhausted",
)

PROT_READ, PROT_WRITE = _core.PROT_READ, _core.PROT_WRITE
ACCESSES = (
    AccessPermissions.NoAccess,
    AccessPermissions.ReadOnly,
    AccessPermissions.ReadWrite,
)


def sim_key(rights: PkeyPermissions = NA) -> PkeyGuard:
    """A PkeyGuard of the simulated mode (alongside this machine's backend)."""
    return _backend.SIMULATED.new_key(PkeyGuard, rights)


# Sets this thread's simulated PKRU (what a thread inherits on pku); not in _core.pyi yet.
sim_set_pkru: Callable[[int], None] = getattr(_core, "_sim_set_pkru")  # noqa: B009


def pool() -> dict[str, int]:
    return dict(_core._pool_stats(_core.MODE_SIM))


def with_bits(pkru: int, number: int, bits: int) -> int:
    shift = 2 * number
    return (pkru & ~(3 << shift)) | (bits << shift)


_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+)", re.M)


def page_rights() -> list[tuple[int, int, str]]:
    with open("/proc/self/maps", encoding="utf-8") as f:
        text = f.read()
    return [(int(a, 16), int(b, 16), p) for a, b, p in _MAPPING.findall(text)]


def rights_at(table: list[tuple[int, int, str]], address: int) -> str | None:
    for start, end, perms in table:
        if start <= address < end:
            return perms
    return None


@pytest.fixture(autouse=True)
def restore_pool_limit() -> Iterator[None]:
    """Every test here may lower the simulated pool's limit: put it back afterwards."""
    old = _core._pool_limit(_core.MODE_SIM, 15)
    _core._pool_limit(_core.MODE_SIM, old)
    try:
        yield
    finally:
        while _capacities:
            _capacities.pop().close()
        _core._pool_limit(_core.MODE_SIM, old)


class Capacity:
    """The pool set up with exactly ``n`` numbers for NoAccess keys and ``pinned`` for keys
    with initial rights, all spares (known), and a limit at what it holds: nothing more is
    allocated.  The pool never gives a number back, so a process only gains numbers: the
    NoAccess-class ones beyond ``n`` are held by "ballast" keys that a thread of their own
    keeps open with ReadOnly guards (never evicted), the others' beyond ``pinned`` by pinned
    keys kept open, until :meth:`close`.  Numbers are only
    ever allocated here, so whatever ran before, every user of this starts the same."""

    def __init__(
        self, mode: int, make_key: Callable[[PkeyPermissions], PkeyGuard], n: int, pinned: int
    ) -> None:
        self.mode = mode
        self.old_limit = _core._pool_limit(mode, 15)
        start = dict(_core._pool_stats(mode))
        assert start["owned"] == start["logical"] == 0, f"keys left over: {start}"
        virtual = [make_key(NA) for _ in range(max(n, start["spare"]))]
        pins = [make_key(RO) for _ in range(max(pinned, start["quarantined"]))]
        assert all(k.hardware_key is not None for k in virtual + pins), "no room in the pool"
        self.spares = {k.hardware_key for k in virtual[:n] if k.hardware_key is not None}
        self.pinned_spares = {k.hardware_key for k in pins[:pinned] if k.hardware_key}
        self.ballast = virtual[n:]
        self.ballast_numbers = {k.hardware_key for k in self.ballast if k.hardware_key}
        self.pinned_ballast = pins[pinned:]  # held for life anyway: just kept open
        self.pinned_ballast_numbers = {
            k.hardware_key for k in self.pinned_ballast if k.hardware_key
        }
        for k in virtual[:n] + pins[:pinned]:
            k.close()
        self.regions = [RegionGuard(ctypes.c_uint32) for _ in self.ballast]
        assocs = [k.associate(r) for k, r in zip(self.ballast, self.regions, strict=True)]
        self.release, held = threading.Event(), threading.Event()

        def hold() -> None:
            _core._pool_sync(mode)  # started after the pinned keys above: clear of them
            guards = [a.set_access_rights(RO) for a in assocs]
            for g in guards:
                g.__enter__()
            held.set()
            self.release.wait(600)
            for g in reversed(guards):
                g.__exit__(None, None, None)

        self.thread = threading.Thread(target=hold, name="ballast", daemon=True)
        self.thread.start()
        assert held.wait(60)
        self.limit = dict(_core._pool_stats(mode))["held"]
        _core._pool_limit(mode, self.limit)

    def close(self) -> None:
        self.release.set()
        join_os_thread(self.thread)
        for k in self.ballast + self.pinned_ballast:
            k.close()
        for r in self.regions:
            r.close()
        _core._pool_limit(self.mode, self.old_limit)


@contextlib.contextmanager
def capacity(n: int, pinned: int = 0) -> Iterator[Capacity]:
    """The simulated pool with ``n`` numbers for NoAccess keys and ``pinned`` for keys with
    initial rights, all free, and nothing more to allocate."""
    cap = Capacity(_core.MODE_SIM, sim_key, n, pinned)
    try:
        yield cap
    finally:
        cap.close()


# -- the model ----------------------------------------------------------------------------


@dataclass(eq=False)
class KeyM:
    obj: PkeyGuard
    pinned: bool
    base: int
    number: int | None
    last: int = 0  # when it was last entered (or took its number): the LRU order
    closed: bool = False
    regions: list[RegionM] = field(default_factory=lambda: [])

    def __repr__(self) -> str:
        kind = "pinned" if self.pinned else "virtual"
        return f"key#{self.obj.key}({kind}, n={self.number})"


@dataclass(eq=False)
class RegionM:
    obj: RegionGuard[ctypes.c_uint32]
    access: AccessPermissions
    address: int
    value: int = 0
    key: KeyM | None = None
    assoc: AssociatedRegion[ctypes.c_uint32] | None = None
    closed: bool = False

    def __repr__(self) -> str:
        return f"region@{self.address:#x}({self.access.name}, {self.key!r})"


@dataclass(eq=False)
class GuardM:
    obj: AccessGuard[ctypes.c_uint32]
    key: KeyM
    region: RegionM
    level: int
    saved: int = 0  # pinned keys: this thread's bits for the number before entry

    def __repr__(self) -> str:
        return f"guard({self.region!r}, {PERMISSION[self.level].name})"


N_THREADS = 3  # this thread (0) and two workers
MAX_KEYS = 6
MAX_REGIONS = 6
THREAD = st.integers(0, N_THREADS - 1)
INDEX = st.integers(0, 15)
VALUE = st.integers(0, 2**32 - 1)
# Mostly virtual keys (NoAccess at creation); some pinned.
KEY_RIGHTS = st.sampled_from([NA, NA, NA, NA, RO, RW])


class VirtualKeysMachine(OnThreads, RuleBasedStateMachine):
    """The pool's model: numbers held by logical keys, LRU, number classes, per-thread rights.

    Written for the simulated mode; tests/hw/test_virtual_keys.py runs it on pku by
    overriding the mode hooks (``MODE``, ``make_key``, ``read_pkru``, ``ENFORCED``,
    ``new_thread_pkru``, ``check_tags``).

    The pool's numbers are in two classes that never mix, and it never frees one: those for
    NoAccess ("virtual") keys, spares or owned, and those for keys with initial rights
    ("pinned"), which never evict.  ``tracked[t]`` is thread t's expected PKRU for the
    pinned class: it changes only by the documented rules (a pinned key's initial rights on
    its creating thread, closing on the closing thread, guards on pinned keys, and a sync
    closing every closed pinned key's number).  For every number of the virtual class, every
    thread's bits are derived from its own guard stack: closed unless its innermost active
    guard on the key that owns it opened it.

    A closed pinned key's number goes to a later pinned key only when every thread is
    *clear* of it (:meth:`clear`): synced since it was closed, or seen before the number was
    taken and not its creator.  The model counts time in steps (``clock``); every worker is
    registered with the pool when it starts (``_pool_thread_seen``), and thread 0 counts as
    started before everything (the pool reads its start time from the kernel).
    """

    MODE: int = _core.MODE_SIM
    ENFORCED = False  # the sim does not enforce key rights: only parking closes pages
    MAPS_EVERY_STEP = True  # else only after steps that can change page rights or tags
    TAGS_EVERY = 1  # check_tags after every n-th step that changed tags (and at the end)

    @staticmethod
    def make_key(rights: PkeyPermissions) -> PkeyGuard:
        return sim_key(rights)

    @staticmethod
    def read_pkru() -> int:
        return _core._sim_pkru()

    def stats(self) -> dict[str, int]:
        return dict(_core._pool_stats(self.MODE))

    def new_thread_pkru(self) -> int:
        """What a thread has when it starts: the sim starts every thread closed."""
        return INIT_PKRU

    def start_worker(self, t: int) -> None:
        """A new worker thread t, started by thread 0: it inherits thread 0's PKRU (on pku
        the CPU copies it; the sim starts every thread closed, so it is set as pku would)."""
        inherited = self.pkru(0)
        self.workers[t - 1] = Worker(f"vk-{t}")
        self.workers[t - 1].run(lambda: sim_set_pkru(inherited))
        self.workers[t - 1].run(_core._pool_thread_seen)
        self.tracked[t] = inherited
        self.synced[t] = False
        self.seen[t] = self.now()
        self.synced_at[t] = None
        self.made[t] = set()

    def check_tags(self) -> None:
        """pku: the key tag of every region (smaps).  The sim has none."""

    def __init__(self) -> None:
        super().__init__()
        self.tags_changed = True
        self.tag_steps = 0
        self.stacks: list[list[GuardM]] = [[] for _ in range(N_THREADS)]
        self.keys: list[KeyM] = []
        self.regions: list[RegionM] = []
        self.created: list[PkeyGuard] = []
        self.tick = 0
        start = self.stats()
        assert start["owned"] == start["pinned"] == start["logical"] == 0, (
            f"keys left over from an earlier test: {start}"
        )
        self.old_limit = start["limit"]
        self.counters = {name: start[name] for name in COUNTERS}
        self.spares: set[int] = set()  # NoAccess class, no owner
        self.pinned_spares: set[int] = set()  # initial-rights class, no owner
        self.ballast: set[int] = set()  # NoAccess class, held open by Capacity's thread
        self.pinned_ballast: set[int] = set()  # initial-rights class, Capacity's keys
        self.capacity: Capacity | None = None
        self.limit = self.old_limit
        # Pinned numbers: when each was last taken and closed, and those proved closed in every
        # thread; per thread: when the pool first saw it (thread 0: before everything), last
        # synced, and what it created and holds.  Each thread syncs first: what an earlier
        # example left in this process (thread 0 and the pool outlive it) is then settled.
        self.clock = 0
        self.taken: dict[int, int] = {}
        self.retired: dict[int, int] = {}
        self.clean: set[int] = set()
        self.seen: list[int | None] = [-1] + [None] * (N_THREADS - 1)
        self.synced_at: list[int | None] = [None] * N_THREADS
        self.made: list[set[int]] = [set() for _ in range(N_THREADS)]
        _core._pool_sync(self.MODE)
        self.synced_at[0] = self.now()
        self.tracked = [self.read_pkru()]
        self.synced = [False] * N_THREADS
        new_thread = self.new_thread_pkru()
        self.workers = [Worker(f"vk-{i}") for i in range(1, N_THREADS)]
        for i, w in enumerate(self.workers, start=1):
            got = w.run(self.read_pkru)
            assert got == new_thread, f"a new thread's PKRU {got:#x}, expected {new_thread:#x}"
            w.run(functools.partial(_core._pool_sync, self.MODE))
            self.seen[i] = self.synced_at[i] = self.now()
            self.tracked.append(w.run(self.read_pkru))

    # -- model helpers --------------------------------------------------------------------
    def live_keys(self) -> list[KeyM]:
        return [k for k in self.keys if not k.closed]

    def live_regions(self) -> list[RegionM]:
        return [r for r in self.regions if not r.closed]

    def held_numbers(self) -> set[int]:
        owned = {k.number for k in self.live_keys() if k.number is not None}
        return owned | self.spares | self.pinned_spares | self.ballast | self.pinned_ballast

    def held(self) -> int:
        return len(self.held_numbers())

    def innermost(self, t: int, key: KeyM) -> GuardM | None:
        for g in reversed(self.stacks[t]):
            if g.key is key:
                return g
        return None

    def opening(self, key: KeyM) -> bool:
        """An opening guard (ReadOnly/ReadWrite) on the key is active on some thread."""
        return any(g.key is key and g.level > NONE for s in self.stacks for g in s)

    def busy(self, key: KeyM) -> bool:
        return any(g.key is key for s in self.stacks for g in s)

    def sync(self, t: int) -> None:
        """A guard entry (even a refused one) first re-derives the thread's bits for the
        NoAccess-class numbers if numbers changed owner since it last did; a new thread always
        does.  From then on they are what its guards say (:meth:`pkru`): a number that changes
        owner later was closed in it before and stays closed.  It also closes the numbers of
        closed pinned keys (so does creating a pinned key), which clears the thread of them."""
        self.synced[t] = True
        for n in self.pinned_spares:
            self.tracked[t] = with_bits(self.tracked[t], n, CLOSED)
        live_pinned = {k.number for k in self.live_keys() if k.pinned}
        self.made[t] &= live_pinned
        if self.seen[t] is None:
            self.seen[t] = self.now()
        self.synced_at[t] = self.now()

    def now(self) -> int:
        self.clock += 1
        return self.clock

    def clear(self, t: int, n: int) -> bool:
        """Thread t provably has closed pinned number n closed: it synced since n was closed,
        or the pool saw it before n was taken and it did not create n."""
        synced, seen = self.synced_at[t], self.seen[t]
        if synced is not None and synced > self.retired[n]:
            return True
        return n not in self.made[t] and seen is not None and seen < self.taken[n]

    def reusable(self) -> set[int]:
        """The closed pinned keys' numbers that a new pinned key may take: those proved closed
        in every thread (which stay so while they have no owner); the pool checks the threads
        again only when none is."""
        if not self.pinned_spares & self.clean:
            self.clean |= {
                n for n in self.pinned_spares if all(self.clear(t, n) for t in range(N_THREADS))
            }
        return self.pinned_spares & self.clean

    def pkru(self, t: int) -> int:
        """Thread t's PKRU: before its first guard entry what it inherited, changed only by its
        own key creations and closes; after it, the pinned class as tracked and every
        NoAccess-class number derived from its own guards."""
        value = self.tracked[t]
        if not self.synced[t]:
            return value
        for n in self.spares | self.ballast:
            value = with_bits(value, n, CLOSED)
        for k in self.live_keys():
            if k.number is not None and not k.pinned:
                inner = self.innermost(t, k)
                value = with_bits(value, k.number, PKRU_BITS[inner.level] if inner else CLOSED)
        return value

    def page_prot(self, r: RegionM) -> int:
        if r.key is not None and r.key.number is None:
            return 0  # parked
        return int(r.access)

    def can_access(self, t: int, r: RegionM, write: bool) -> bool:
        if not self.page_prot(r) & (PROT_WRITE if write else PROT_READ):
            return False
        if self.ENFORCED and r.key is not None and r.key.number is not None:
            level = level_of_bits(bits_of(self.pkru(t), r.key.number))
            return level >= (WRITE if write else READ)
        return True

    def touch(self, key: KeyM) -> None:
        self.tick += 1
        key.last = self.tick

    def victim(self) -> KeyM | None:
        """The least recently entered virtual key that holds a number and has no opening
        guard on any thread."""
        candidates = [
            k
            for k in self.live_keys()
            if not k.pinned and k.number is not None and not self.opening(k)
        ]
        return min(candidates, key=lambda k: k.last) if candidates else None

    def can_alloc(self) -> bool:
        """Below the limit (every number the pool ever took counts: it never frees one)."""
        return self.held() < min(self.limit, len(NUMBERS))

    def evict(self, victim: KeyM) -> int:
        assert victim.number is not None
        number, victim.number = victim.number, None
        self.counters["evictions"] += 1
        self.counters["parks"] += len(victim.regions)
        return number

    def check_fresh(self, number: int | None, what: str) -> int:
        """A number from pkey_alloc: one that nothing in the pool holds."""
        assert number is not None, f"{what}: no number, but one was free below the limit"
        assert number in NUMBERS and number not in self.held_numbers(), (
            f"{what}: got {number}, already held ({sorted(self.held_numbers())})"
        )
        if self.MODE == _core.MODE_SIM:
            lowest = min(set(NUMBERS) - self.held_numbers())  # the sim kernel's choice
            assert number == lowest, f"{what}: got {number}, the lowest free is {lowest}"
        self.counters["allocs"] += 1
        return number

    # -- rules: setup ---------------------------------------------------------------------
    @initialize(
        limit=st.integers(1, 4),
        pinned=st.integers(0, 3),
        keys=st.lists(KEY_RIGHTS, min_size=2, max_size=5),
    )
    def init_pool(self, limit: int, pinned: int, keys: list[PkeyPermissions]) -> None:
        """``limit`` numbers for NoAccess keys (so that eviction is frequent), ``pinned`` for
        keys with initial rights (so that they are refused too), nothing more to allocate; a
        few keys, each with a region."""
        self.capacity = Capacity(self.MODE, self.make_key, limit, pinned)
        self.spares = set(self.capacity.spares)
        self.pinned_spares = set(self.capacity.pinned_spares)
        self.ballast = set(self.capacity.ballast_numbers)
        self.pinned_ballast = set(self.capacity.pinned_ballast_numbers)
        self.limit = self.capacity.limit
        start = self.stats()
        self.counters = {name: start[name] for name in COUNTERS}
        for n in self.pinned_spares:  # made and closed by thread 0 after every worker started
            self.taken[n] = self.now()
            self.retired[n] = self.now()
        self.tracked = [self.on(t, self.read_pkru) for t in range(N_THREADS)]
        for rights in keys:
            self.new_key(rights, 0)
            if self.keys and self.keys[-1] in self.live_keys():
                self.new_region(AccessPermissions.ReadWrite, 0)
                self.do_associate(self.keys[-1], self.regions[-1], 0)

    # -- rules: keys ----------------------------------------------------------------------
    @precondition(lambda self: len(self.live_keys()) < MAX_KEYS)
    @rule(rights=KEY_RIGHTS, t=THREAD)
    def new_key(self, rights: PkeyPermissions, t: int) -> None:
        pinned = rights is not NA
        error: type[Exception] | None = None
        source = ""
        if pinned:  # the creator syncs first; then only numbers every thread is clear of
            self.sync(t)
        spares = self.reusable() if pinned else self.spares
        if pinned and self.pinned_spares and not spares:
            event("a closed pinned key's number waits for a thread")
        if spares:
            source = "spare"
        elif self.can_alloc():
            source = "alloc"
        elif pinned:  # a pinned key never evicts
            error = KeyExhaustedError
        before = self.stats()

        def create() -> PkeyGuard:
            made = self.make_key(rights)
            self.created.append(made)  # closed by teardown even if the model is wrong
            return made

        obj = self.expect(t, create, error, f"new {rights.name} key")
        if obj is None:
            self.counters["exhausted"] += 1
            self.assert_unchanged(before, "a refused pinned key")
            return
        number = obj.hardware_key
        what = f"new {'pinned' if pinned else 'virtual'} key on thread {t}"
        if source == "alloc":
            number = self.check_fresh(number, what)
        elif source == "spare":  # the lowest spare of its class
            assert number is not None and number == min(spares), f"{what}: took {number}"
            (self.pinned_spares if pinned else self.spares).remove(number)
        else:
            assert number is None, f"{what}: took {number} although none was free"
        k = KeyM(obj, pinned, LEVEL[rights], number)
        if pinned and number is not None:
            self.taken[number] = self.now()
            self.made[t].add(number)
            self.clean.discard(number)
        self.touch(k)  # every new key is stamped (a parked one is restamped when it takes one)
        if number is not None:  # closed in the calling thread, then pkey_alloc's rights
            self.tracked[t] = with_bits(self.tracked[t], number, PKRU_BITS[k.base])
        self.keys.append(k)

    @precondition(lambda self: self.keys)
    @rule(i=INDEX, t=THREAD)
    def close_key(self, i: int, t: int) -> None:
        self.tags_changed = True
        k = self.keys[-1 - i % len(self.keys)]
        refused = not k.closed and self.busy(k)
        self.expect(t, k.obj.close, KeyStateError if refused else None, f"close {k!r}")
        if refused or k.closed:
            return
        for r in k.regions:  # untagged: key 0, their own rights
            r.key = r.assoc = None
        k.regions = []
        k.closed = True
        if k.number is not None:  # kept, a spare of its class; closed in this thread
            (self.pinned_spares if k.pinned else self.spares).add(k.number)
            self.tracked[t] = with_bits(self.tracked[t], k.number, CLOSED)
            self.made[t].discard(k.number)
            if k.pinned:
                self.retired[k.number] = self.now()
                self.clean.discard(k.number)

    # -- rules: regions -------------------------------------------------------------------
    @precondition(lambda self: len(self.live_regions()) < MAX_REGIONS)
    @rule(access=st.sampled_from(ACCESSES), t=THREAD)
    def new_region(self, access: AccessPermissions, t: int) -> None:
        self.tags_changed = True
        obj = self.expect(t, lambda: RegionGuard(ctypes.c_uint32, access), None, "RegionGuard")
        assert obj is not None
        self.regions.append(RegionM(obj, access, obj.address))

    def do_associate(self, k: KeyM, r: RegionM, t: int) -> None:
        self.tags_changed = True
        error: type[Exception] | None = None
        if k.closed:
            error = KeyStateError
        elif r.closed or r.assoc is not None:
            error = RegionError
        assoc = self.expect(t, lambda: k.obj.associate(r.obj), error, f"associate {r!r} {k!r}")
        if assoc is not None:
            r.key, r.assoc = k, assoc
            k.regions.append(r)  # tagged (or parked) now: not a miss, not counted

    def free_regions(self) -> list[RegionM]:
        return [r for r in self.regions if not r.closed and r.assoc is None]

    @precondition(lambda self: self.keys and self.free_regions())
    @rule(i=INDEX, j=INDEX, t=THREAD)
    def associate(self, i: int, j: int, t: int) -> None:
        """A free region with a key (a closed key: refused); the refusals for regions already
        associated are the general machine's (tests/unit/test_state_machine.py)."""
        free = self.free_regions()
        self.do_associate(self.keys[-1 - i % len(self.keys)], free[j % len(free)], t)

    @precondition(lambda self: any(r.assoc is not None for r in self.regions))
    @rule(i=INDEX, t=THREAD)
    def disassociate(self, i: int, t: int) -> None:
        self.tags_changed = True
        tagged = [r for r in self.regions if r.assoc is not None]
        r = tagged[i % len(tagged)]
        assert r.assoc is not None and r.key is not None
        refused = any(g.region is r for s in self.stacks for g in s)
        self.expect(t, r.assoc.disassociate, RegionError if refused else None, f"detach {r!r}")
        if not refused:
            r.key.regions.remove(r)
            r.key = r.assoc = None

    @precondition(lambda self: self.live_regions())
    @rule(i=INDEX, t=THREAD)
    def close_region(self, i: int, t: int) -> None:
        self.tags_changed = True
        live = self.live_regions()
        r = live[i % len(live)]
        refused = any(g.region is r for s in self.stacks for g in s)
        self.expect(t, r.obj.close, RegionError if refused else None, f"close {r!r}")
        if not refused:
            if r.key is not None:
                r.key.regions.remove(r)
            r.key = r.assoc = None
            r.closed = True

    # -- rules: guards --------------------------------------------------------------------
    def tagged(self) -> list[RegionM]:
        return [r for r in self.regions if r.assoc is not None]

    @precondition(lambda self: self.tagged())
    @rule(i=INDEX, rights=st.sampled_from([NA, RO, RO, RW, RW]), value=VALUE, t=THREAD)
    def enter(self, i: int, rights: PkeyPermissions, value: int, t: int) -> None:
        """Enter a guard and stay inside it."""
        self.do_enter(self.tagged()[i % len(self.tagged())], rights, value, t)

    @precondition(lambda self: self.tagged())
    @rule(i=INDEX, rights=st.sampled_from([NA, RO, RW, RW]), value=VALUE, t=THREAD)
    def switch(self, i: int, rights: PkeyPermissions, value: int, t: int) -> None:
        """A whole ``with`` block: enter, use the view, leave."""
        if self.do_enter(self.tagged()[i % len(self.tagged())], rights, value, t):
            self.do_exit(t)

    @precondition(lambda self: self.tagged())
    @rule(
        moves=st.lists(
            st.tuples(INDEX, st.sampled_from([RO, RW, RW, NA]), THREAD), min_size=2, max_size=8
        ),
        value=VALUE,
    )
    def burst(self, moves: list[tuple[int, PkeyPermissions, int]], value: int) -> None:
        """Several ``with`` blocks in a row, on any threads: where evictions come from."""
        for i, rights, t in moves:
            if self.do_enter(
                self.tagged()[i % len(self.tagged())], rights, (value + i) & 0xFFFFFFFF, t
            ):
                self.do_exit(t)

    def do_enter(self, r: RegionM, rights: PkeyPermissions, value: int, t: int) -> bool:
        assert r.assoc is not None and r.key is not None
        self.sync(t)
        k, level, assoc = r.key, LEVEL[rights], r.assoc
        guard = self.expect(t, lambda: assoc.set_access_rights(rights), None, "set_access_rights")
        assert guard is not None
        g = GuardM(guard, k, r, level)
        what = f"enter {g!r} on thread {t}"
        error: type[Exception] | None = None
        victim: KeyM | None = None
        fresh = spare = False
        if level > NONE and k.number is None:  # a miss
            if self.spares:
                spare = True
            elif self.can_alloc():
                fresh = True
            else:
                victim = self.victim()
                if victim is None:
                    error = KeyExhaustedError
        before = self.stats()
        got = self.expect(t, guard.__enter__, error, what)
        if error is not None:
            self.counters["exhausted"] += 1
            self.assert_unchanged(before, what)
            assert k.obj.hardware_key is None
            return False
        assert got is guard
        if level == NONE or k.number is not None:
            self.counters["hits"] += 1  # a NoAccess guard on a parked key: a hit too
        if level > NONE and k.number is None:
            self.tags_changed = True
            self.counters["misses"] += 1
            self.counters["retags"] += len(k.regions)
            if spare:
                number = k.obj.hardware_key
                assert number is not None and number == min(self.spares), f"{what}: {number}"
                self.spares.remove(number)
                k.number = number
            elif fresh:
                k.number = self.check_fresh(k.obj.hardware_key, what)
            else:
                assert victim is not None
                k.number = self.evict(victim)
                event("eviction")
        if k.number is not None:  # least recently *entered*: any guard on a held key
            self.touch(k)
        if k.pinned:
            assert k.number is not None
            g.saved = bits_of(self.tracked[t], k.number)
            self.tracked[t] = with_bits(self.tracked[t], k.number, PKRU_BITS[level])
        self.stacks[t].append(g)
        if level > NONE and r.access.readable:
            self.use_view(g, value, t)
        return True

    def use_view(self, g: GuardM, value: int, t: int) -> None:
        """A view inside the guard, on its thread: the value survived parking and re-tagging."""
        guard: Any = g.obj
        got = self.on(t, lambda: int(guard.ref_guard().value))
        assert got == g.region.value, f"{g!r}: read {got}, the model has {g.region.value}"
        if g.level == WRITE and g.region.access.writable:

            def write() -> None:
                guard.mut_ref_guard().value = value

            self.on(t, write)
            g.region.value = value

    @precondition(lambda self: any(self.stacks))
    @rule(t=THREAD)
    def exit_innermost(self, t: int) -> None:
        busy = [n for n in range(N_THREADS) if self.stacks[n]]
        self.do_exit(busy[t % len(busy)])

    def do_exit(self, t: int) -> None:
        g = self.stacks[t].pop()
        self.expect(t, lambda: g.obj.__exit__(None, None, None), None, f"exit {g!r}")
        if g.key.pinned:
            assert g.key.number is not None
            self.tracked[t] = with_bits(self.tracked[t], g.key.number, g.saved)

    @rule(t=st.integers(1, N_THREADS - 1))
    def thread_ends(self, t: int) -> None:
        """A worker ends, maybe inside guards: they end with it (their keys may be evicted
        now), and a new thread takes its place, started by thread 0, maybe inside guards: it
        inherits what they opened until its first guard entry."""
        self.workers[t - 1].stop()
        self.stacks[t] = []
        self.start_worker(t)

    # -- rules: memory --------------------------------------------------------------------
    @precondition(lambda self: self.live_regions())
    @rule(i=INDEX, write=st.booleans(), value=VALUE, t=THREAD)
    def raw_access(self, i: int, write: bool, value: int, t: int) -> None:
        """A plain access, only where the model says the pages allow it (the sim does not
        enforce the key: only parking does)."""
        live = self.live_regions()
        r = live[i % len(live)]
        if not self.can_access(t, r, write):
            return
        event(f"raw {'write' if write else 'read'}")
        cell = ctypes.c_uint32.from_address(r.address)
        if write:
            self.on(t, lambda: setattr(cell, "value", value))
            r.value = value
        else:
            assert self.on(t, lambda: cell.value) == r.value

    # -- invariants -----------------------------------------------------------------------
    def assert_unchanged(
        self, before: dict[str, int], what: str, also: frozenset[str] = frozenset()
    ) -> None:
        after = self.stats()
        changed = {n: (before[n], after[n]) for n in before if before[n] != after[n]}
        allowed = {
            "exhausted",
            "switches",
            "syncs",
            "pinned_waits",
        } | also  # a refused entry syncs this thread first; a refused pinned key may wait
        assert set(changed) <= allowed, f"{what} changed the pool: {changed}"

    @invariant()
    def world_matches_model(self) -> None:
        live = self.live_keys()
        for t in range(N_THREADS):

            def observe() -> tuple[int, list[int | None], list[int]]:
                return (
                    self.read_pkru(),
                    [k.obj.hardware_key for k in live],
                    [k.obj._thread_level() for k in live],
                )

            pkru, numbers, levels = self.on(t, observe)
            want = self.pkru(t)
            assert pkru == want, f"thread {t}: sim PKRU {pkru:#x} != model {want:#x}"
            assert numbers == [k.number for k in live], (
                f"hardware keys {numbers} != model {[k.number for k in live]} ({live})"
            )
            want_levels = [
                level_of_bits(bits_of(want, k.number)) if k.number is not None else NONE
                for k in live
            ]
            assert levels == want_levels, f"thread {t}: levels {levels} != {want_levels}"
        if self.MAPS_EVERY_STEP or self.tags_changed:
            table = page_rights()
            for r in self.live_regions():
                want_prot = prot_string(self.page_prot(r))
                assert rights_at(table, r.address) == want_prot, (
                    f"{r!r}: maps say {rights_at(table, r.address)}, model {want_prot}"
                )
                assert r.obj.access is r.access
        if self.tags_changed:
            self.tag_steps += 1
            if self.tag_steps % self.TAGS_EVERY == 0:
                self.check_tags()
                self.tags_changed = False
        stats = self.stats()
        pinned = [k for k in live if k.pinned]
        virtual = [k for k in live if not k.pinned]
        ballast = len(self.ballast)
        pinned_ballast = len(self.pinned_ballast)
        want_stats = {
            "limit": self.limit,
            "held": self.held(),
            "pinned": len(pinned) + pinned_ballast,
            "quarantined": len(self.pinned_spares),
            "spare": len(self.spares),
            "owned": sum(k.number is not None for k in live) + ballast + pinned_ballast,
            "logical": len(live) + ballast + pinned_ballast,
            "parked": sum(k.number is None for k in virtual),
            "opening": sum(self.opening(k) for k in live) + ballast,
            "switches": self.counters["hits"]
            + self.counters["misses"]
            + self.counters["exhausted"],
            **self.counters,
        }
        got = {name: stats[name] for name in want_stats}
        assert got == want_stats, f"pool stats {got} != model {want_stats}"

    # -- teardown -------------------------------------------------------------------------
    def teardown(self) -> None:
        """Leave every guard (the threads' real stacks: this works where the model went
        wrong), close everything, and check that nothing of this example is left."""
        problems: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                problems.append(f"{what}: {exc!r}")

        def unwind() -> None:
            stack = _core.thread_guards()  # innermost first: leaving the outermost unwinds
            if stack:
                with contextlib.suppress(GuardOrderError):
                    stack[-1].__exit__(None, None, None)

        try:
            if self.tags_changed:
                attempt("the last tags", self.check_tags)
            for t in range(N_THREADS):
                attempt(f"leave thread {t}'s guards", functools.partial(self.on, t, unwind))
            for key in self.created:
                attempt(f"close {key!r}", key.close)
            for r in self.regions:
                attempt(f"close {r!r}", r.obj.close)
            if self.capacity is not None:
                attempt("release the ballast", self.capacity.close)
            left = self.stats()
            if left["logical"] or left["owned"] or left["pinned"]:
                problems.append(f"keys left: {left}")
        finally:
            _core._pool_limit(self.MODE, self.old_limit)
            for w in self.workers:
                w.stop()
        assert not problems, "teardown: " + "; ".join(problems)


TestVirtualKeysMachine = pytest.mark.slow(VirtualKeysMachine.TestCase)
TestVirtualKeysMachine.settings = settings(
    max_examples=vk_state_examples(),
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- focused tests ------------------------------------------------------------------------


def unchanged(before: dict[str, int], after: dict[str, int]) -> bool:
    """The pool is as it was, but for the counters a refused entry moves: ``exhausted``, and
    ``switches`` and ``syncs`` (the entry was attempted; the thread synced first), and
    ``pinned_waits`` (a refused pinned key found closed ones still held up)."""
    counted = {"exhausted", "switches", "syncs", "pinned_waits"}
    return {n: v for n, v in after.items() if n not in counted} == {
        n: v for n, v in before.items() if n not in counted
    }


_capacities: list[Capacity] = []


def set_limit(n: int, pinned: int = 0) -> Capacity:
    """For this test: ``n`` numbers for NoAccess keys, ``pinned`` for keys with initial
    rights, nothing more (Capacity); undone after the test by ``restore_pool_limit``."""
    cap = Capacity(_core.MODE_SIM, sim_key, n, pinned)
    _capacities.append(cap)
    return cap


def region_with(key: PkeyGuard) -> tuple[RegionGuard[ctypes.c_uint32], Any]:
    region = RegionGuard(ctypes.c_uint32)
    return region, key.associate(region)


def test_a_hit_changes_no_pages() -> None:
    set_limit(2)
    key = sim_key()
    region, assoc = region_with(key)
    try:
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard().value = 5
        number = key.hardware_key
        assert number is not None
        before = pool()
        for _ in range(100):
            with assoc.set_access_rights(RO) as r:
                assert r.ref_guard().value == 5
        after = pool()
        assert key.hardware_key == number
        assert after["hits"] - before["hits"] == 100
        for name in ("misses", "retags", "parks", "evictions", "allocs"):
            assert after[name] == before[name], f"a hit changed {name}"
    finally:
        key.close()
        region.close()


def test_a_miss_retags_exactly_the_keys_regions() -> None:
    set_limit(1)
    a, b = sim_key(), sim_key()
    a_regions = [region_with(a) for _ in range(3)]
    b_regions = [region_with(b) for _ in range(2)]
    try:
        with a_regions[0][1].set_access_rights(RW) as g:
            g.mut_ref_guard().value = 1
        assert a.hardware_key is not None and b.hardware_key is None
        for region, _ in b_regions:
            assert perms_at(region.address) == "---p"
        for region, _ in a_regions:
            assert perms_at(region.address) == "rw-p"
        before = pool()
        with b_regions[1][1].set_access_rights(RO):  # miss: evicts a (1 number)
            pass
        after = pool()
        delta = {n: after[n] - before[n] for n in ("misses", "evictions", "retags", "parks")}
        assert delta == {"misses": 1, "evictions": 1, "retags": 2, "parks": 3}, delta
        assert a.hardware_key is None and b.hardware_key is not None
        for region, _ in a_regions:
            assert perms_at(region.address) == "---p"
        for region, _ in b_regions:
            assert perms_at(region.address) == "rw-p"
        with a_regions[0][1].set_access_rights(RO) as r:  # and back: the value survived
            assert r.ref_guard().value == 1
    finally:
        a.close()
        b.close()
        for region, _ in a_regions + b_regions:
            region.close()


def test_least_recently_entered_is_evicted() -> None:
    set_limit(2)
    keys = [sim_key() for _ in range(3)]
    regions = [region_with(k) for k in keys]
    try:
        for i in (0, 1, 0):  # 1 is now the least recently entered
            with regions[i][1].set_access_rights(RO):
                pass
        with regions[2][1].set_access_rights(RO):
            pass
        assert [k.hardware_key is not None for k in keys] == [True, False, True]
        with regions[1][1].set_access_rights(RO):  # now 0 is the oldest
            pass
        assert [k.hardware_key is not None for k in keys] == [False, True, True]
    finally:
        for k in keys:
            k.close()
        for region, _ in regions:
            region.close()


def test_no_eviction_under_an_opening_guard_on_another_thread() -> None:
    set_limit(1)
    a, b = sim_key(), sim_key()
    (ra, aa), (rb, ab) = region_with(a), region_with(b)
    inside, leave, left = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with aa.set_access_rights(RO):
            inside.set()
            leave.wait(10)
        left.set()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(10)
        number = a.hardware_key
        before = pool()
        with pytest.raises(KeyExhaustedError) as info:
            with ab.set_access_rights(RO):
                pass
        assert info.value.errno == errno.ENOSPC
        after = pool()
        assert after["exhausted"] == before["exhausted"] + 1
        assert unchanged(before, after), "a refused entry changed the pool"
        assert a.hardware_key == number and b.hardware_key is None
        assert perms_at(ra.address) == "rw-p" and perms_at(rb.address) == "---p"
        assert _core.thread_guards() == []
        # A NoAccess guard takes nothing, so it is never refused.
        with ab.set_access_rights(NA):
            assert b.hardware_key is None
        leave.set()
        assert left.wait(10)
        with ab.set_access_rights(RO):  # a's guard is gone: a can be evicted now
            assert b.hardware_key == number and a.hardware_key is None
    finally:
        leave.set()
        thread.join(10)
        a.close()
        b.close()
        ra.close()
        rb.close()


def test_exhaustion_message_says_why_and_changes_nothing() -> None:
    set_limit(2)
    keys = [sim_key() for _ in range(3)]
    regions = [region_with(k) for k in keys]
    guards = [regions[i][1].set_access_rights(RW) for i in (0, 1)]
    try:
        for g in guards:
            g.__enter__()
        pkru, maps_before = _core._sim_pkru(), page_rights()
        before = pool()
        with pytest.raises(KeyExhaustedError) as info:
            regions[2][1].set_access_rights(RO).__enter__()
        message = str(info.value)
        assert info.value.errno == errno.ENOSPC
        assert "guard" in message and "active" in message, message
        after = pool()
        assert after["exhausted"] == before["exhausted"] + 1
        assert unchanged(before, after)
        assert _core._sim_pkru() == pkru and page_rights() == maps_before
        assert _core.thread_guards() == [guards[1], guards[0]]
        assert keys[2].hardware_key is None
        # A key with initial rights is refused too: none of its class, and it never evicts
        # (not even the key that holds a number without a guard).
        with pytest.raises(KeyExhaustedError) as pinned_info:
            sim_key(RW)
        assert "initial rights" in str(pinned_info.value)
        cap = _capacities[-1]
        assert pool()["logical"] == 3 + len(cap.pinned_ballast) + len(cap.ballast)
    finally:
        for g in reversed(guards):
            if g.active:
                g.__exit__(None, None, None)
        for k in keys:
            k.close()
        for region, _ in regions:
            region.close()


def test_each_entry_opens_only_its_own_key() -> None:
    """Secret-like: many keys, each with its own region; inside a guard on one, every other
    region is parked or closed in this thread's PKRU."""
    set_limit(4)
    keys = [sim_key() for _ in range(40)]
    regions = [region_with(k) for k in keys]
    try:
        for i, (_, assoc) in enumerate(regions):
            with assoc.set_access_rights(RW) as g:
                g.mut_ref_guard().value = 1000 + i
        for i in [*range(40), *range(39, -1, -1), 3, 17, 3, 17]:
            with regions[i][1].set_access_rights(RO) as g:
                assert g.ref_guard().value == 1000 + i
                pkru, table = _core._sim_pkru(), page_rights()
                assert keys[i].hardware_key is not None
                assert level_of_bits(bits_of(pkru, keys[i].hardware_key or 0)) == READ
                for j, k in enumerate(keys):
                    if j == i:
                        continue
                    number = k.hardware_key
                    if number is None:
                        assert rights_at(table, regions[j][0].address) == "---p"
                    else:
                        assert bits_of(pkru, number) == CLOSED, (i, j, number)
                        assert k._thread_level() == NONE
        assert sum(k.hardware_key is not None for k in keys) == 4
    finally:
        for k in keys:
            k.close()
        for region, _ in regions:
            region.close()


def test_closing_a_key_keeps_its_number_as_a_spare() -> None:
    """Never freed (a thread may still have it open): the next NoAccess key takes it."""
    set_limit(1)
    a = sim_key()
    ra, aa = region_with(a)
    with aa.set_access_rights(RW):
        pass
    number = a.hardware_key
    assert number is not None
    before = pool()
    a.close()
    after = pool()
    assert after["held"] == before["held"] and after["spare"] == before["spare"] + 1
    assert bits_of(_core._sim_pkru(), number) == CLOSED
    assert perms_at(ra.address) == "rw-p", "closing untags: key 0 and the region's own rights"
    b = sim_key()  # takes the spare at creation: no allocation, no eviction
    try:
        assert b.hardware_key == number
        now = pool()
        assert (now["allocs"], now["evictions"]) == (after["allocs"], after["evictions"])
    finally:
        b.close()
        ra.close()


def test_numbers_of_keys_with_initial_rights_never_go_to_noaccess_keys() -> None:
    """A closed pinned key's number stays held for pinned keys only (another thread may
    have inherited its rights): a NoAccess key is refused rather than given it, and the next
    pinned key takes it."""
    cap = set_limit(1, pinned=1)
    (number,) = cap.pinned_spares
    pinned = sim_key(RW)
    assert pinned.hardware_key == number
    assert bits_of(_core._sim_pkru(), number) == PKRU_BITS[WRITE], "initial rights, this thread"
    other_thread_bits: list[int] = []
    t = threading.Thread(target=lambda: other_thread_bits.append(_core._sim_pkru()))
    t.start()
    join_os_thread(t)  # started while the key was open: it holds the number up while it lives
    assert bits_of(other_thread_bits[0], number) == CLOSED, "only the creating thread"
    pinned.close()
    assert pool()["quarantined"] == 1 and bits_of(_core._sim_pkru(), number) == CLOSED
    virtual = [sim_key() for _ in range(2)]  # the first takes the one NoAccess number
    regions = [region_with(k) for k in virtual]
    try:
        assert virtual[1].hardware_key is None
        with regions[0][1].set_access_rights(RO):  # held open: nothing left to evict
            with pytest.raises(KeyExhaustedError), regions[1][1].set_access_rights(RO):
                pass
        assert number not in {k.hardware_key for k in virtual}
        again = sim_key(RO)  # the next pinned key takes it back
        try:
            assert again.hardware_key == number and pool()["quarantined"] == 0
        finally:
            again.close()
    finally:
        for k in virtual:
            k.close()
        for region, _ in regions:
            region.close()


def enter_and_leave(assoc: Any, rights: PkeyPermissions = NA) -> None:
    with assoc.set_access_rights(rights):
        pass


def test_a_closed_pinned_keys_number_waits_for_its_creator_thread() -> None:
    """Class 8 of issue 18.  Thread C creates x ReadWrite: x's number is open in C, outside
    any guard.  This thread closes x, which closes the number here only.  A later key with
    initial rights must not get that number while C may hold it: it takes a fresh one, which
    C has closed.  Once C enters a guard (its sync closes every closed pinned key's number),
    the number is reused, closed in C."""
    cap = set_limit(1, pinned=1)
    (number,) = cap.pinned_spares
    _core._pool_limit(_core.MODE_SIM, cap.limit + 1)  # room for one fresh number
    c = Worker("creator")
    other = sim_key()
    region, assoc = region_with(other)
    made: list[PkeyGuard] = []
    try:
        x = c.run(lambda: sim_key(RW))
        assert x.hardware_key == number
        x.close()
        assert bits_of(c.run(_core._sim_pkru), number) == PKRU_BITS[WRITE], "the attack: C has it"
        waits = pool()["pinned_waits"]
        made.append(y := sim_key(RO))
        assert y.hardware_key is not None
        assert bits_of(c.run(_core._sim_pkru), y.hardware_key) == CLOSED, "C could write y"
        assert y.hardware_key != number and pool()["pinned_waits"] == waits + 1
        c.run(functools.partial(enter_and_leave, assoc))
        assert bits_of(c.run(_core._sim_pkru), number) == CLOSED, "its sync closed it"
        made.append(z := sim_key(RO))
        assert z.hardware_key == number and pool()["pinned_waits"] == waits + 1
        assert bits_of(c.run(_core._sim_pkru), number) == CLOSED
    finally:
        for k in made:
            k.close()
        c.stop()
        other.close()
        region.close()


def test_a_closed_pinned_keys_number_waits_for_a_thread_started_while_it_was_open() -> None:
    """The same for a thread that copied the creator's PKRU when it started (the CPU does;
    the sim's ``_sim_set_pkru`` plays it): the creator closing the key clears itself, not
    the thread it started, whose rights no other thread can close."""
    cap = set_limit(1, pinned=1)
    (number,) = cap.pinned_spares
    _core._pool_limit(_core.MODE_SIM, cap.limit + 1)
    other = sim_key()
    region, assoc = region_with(other)
    x = sim_key(RW)
    inherited = _core._sim_pkru()
    heir, maker = Worker("heir"), Worker("maker")
    made: list[PkeyGuard] = []
    try:
        heir.run(lambda: sim_set_pkru(inherited))
        x.close()
        assert bits_of(heir.run(_core._sim_pkru), number) == PKRU_BITS[WRITE], "the attack"
        made.append(y := maker.run(lambda: sim_key(RO)))
        assert y.hardware_key is not None
        assert bits_of(heir.run(_core._sim_pkru), y.hardware_key) == CLOSED, "heir could write y"
        assert y.hardware_key != number
        heir.run(functools.partial(enter_and_leave, assoc))
        made.append(z := maker.run(lambda: sim_key(RO)))
        assert z.hardware_key == number
        assert bits_of(heir.run(_core._sim_pkru), number) == CLOSED
    finally:
        for k in made:
            k.close()
        heir.stop()
        maker.stop()
        other.close()
        region.close()


def test_threads_started_before_a_pinned_key_never_hold_its_number_up() -> None:
    """A thread that existed before the number was taken, and did not create it, never had
    it open: one pkeyguard saw before (registered), and one it never saw, judged by the
    start time the kernel gives it.  Neither enters a guard, and the number is reused."""
    seen, unseen = Worker("seen"), Worker("unseen")
    try:
        seen.run(_core._pool_thread_seen)
        time.sleep(0.03)  # the kernel's start times count 10 ms ticks: "unseen" is older
        cap = set_limit(1, pinned=1)  # its pinned keys are made (and closed) after both
        (number,) = cap.pinned_spares
        x = sim_key(RW)
        x.close()
        waits = pool()["pinned_waits"]
        y = sim_key(RO)  # the limit allows no fresh number: the reuse must be proved
        try:
            assert y.hardware_key == number and pool()["pinned_waits"] == waits
        finally:
            y.close()
    finally:
        seen.stop()
        unseen.stop()


def test_a_number_proved_closed_stays_so_until_it_is_taken() -> None:
    """Once every live thread is proved to have a closed pinned number closed, a thread
    started later (copying a PKRU that has it closed) does not hold it up."""
    cap = set_limit(1, pinned=2)
    first, second = sorted(cap.pinned_spares)
    xs = [sim_key(RW) for _ in range(2)]
    assert {k.hardware_key for k in xs} == {first, second}
    for k in xs:
        k.close()
    y1 = sim_key(RO)  # proves both, takes the lower
    late = Worker("late")
    y2: PkeyGuard | None = None
    try:
        assert y1.hardware_key == first
        state = _core._sim_pkru()
        late.run(lambda: sim_set_pkru(state))  # started now: seen by no one, copies this PKRU
        waits = pool()["pinned_waits"]
        y2 = sim_key(RO)
        assert y2.hardware_key == second and pool()["pinned_waits"] == waits
        assert bits_of(late.run(_core._sim_pkru), second) == CLOSED
    finally:
        y1.close()
        if y2 is not None:
            y2.close()
        late.stop()


def test_exhaustion_says_closed_pinned_keys_wait_for_their_threads() -> None:
    cap = set_limit(1, pinned=1)
    (number,) = cap.pinned_spares
    c = Worker("creator")
    try:
        x = c.run(lambda: sim_key(RW))
        x.close()
        before = pool()
        with pytest.raises(KeyExhaustedError) as info:
            sim_key(RO)
        assert re.search(
            r"\d+ in use, 1 of closed keys that wait until every thread", str(info.value)
        )
        assert unchanged(before, pool()) and pool()["pinned_waits"] == before["pinned_waits"] + 1
        assert bits_of(c.run(_core._sim_pkru), number) == PKRU_BITS[WRITE]
    finally:
        c.stop()
    y = sim_key(RO)  # the creator has ended: nothing holds the number up
    try:
        assert y.hardware_key == number
    finally:
        y.close()


def test_keys_with_initial_rights_never_evict() -> None:
    """A pinned key takes only a number of its class: with none left it is refused, even
    though a NoAccess key holds a number without a guard (it may be open in a stale
    thread, and a pinned key's number is never closed by a thread's sync)."""
    set_limit(1)
    virtual = sim_key()
    try:
        assert virtual.hardware_key is not None
        with pytest.raises(KeyExhaustedError) as info:
            sim_key(RO)
        assert "initial rights" in str(info.value) and info.value.errno == errno.ENOSPC
        assert virtual.hardware_key is not None
    finally:
        virtual.close()


def test_pinned_keys_are_never_evicted() -> None:
    set_limit(2, pinned=1)
    pinned = sim_key(RO)
    virtual = [sim_key() for _ in range(3)]
    regions = [region_with(k) for k in [pinned, *virtual]]
    try:
        number = pinned.hardware_key
        for _ in range(3):
            for _, assoc in regions[1:]:
                with assoc.set_access_rights(RW):
                    pass
        assert pinned.hardware_key == number
        assert perms_at(regions[0][0].address) == "rw-p"
    finally:
        for k in [pinned, *virtual]:
            k.close()
        for region, _ in regions:
            region.close()


def test_logical_ids_are_never_reused() -> None:
    ids = set()
    for _ in range(50):
        with sim_key() as k:
            assert k.key not in ids
            ids.add(k.key)


def test_one_key_per_secret_on_this_backend() -> None:
    """Issue 11, part 3: revealing one secret opens that secret only (on mprotect the other
    secret's pages stay PROT_NONE; with one shared key they were opened too)."""
    a = Secret.from_bytes(bytearray(b"alpha"))
    b = Secret.from_bytes(bytearray(b"bravo"))
    try:
        with a.reveal() as buf:
            assert bytes(buf) == b"alpha"
            assert perms_at(a.address)[0] == "r"
            assert perms_at(b.address)[:3] == "---", "revealing a opened b"
        with b.reveal() as buf:
            assert bytes(buf) == b"bravo"
            assert perms_at(a.address)[:3] == "---", "revealing b opened a"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("wrong", ["most-recent-victim", "no-quarantine", "eager-parking"])
def test_a_wrong_model_fails(wrong: str) -> None:
    """The machine's checks bite: a model that is wrong in one rule fails within a few
    examples (no shrinking: only that it fails matters)."""

    class Wrong(VirtualKeysMachine):
        def victim(self) -> KeyM | None:
            if wrong != "most-recent-victim":
                return super().victim()
            candidates = [
                k
                for k in self.live_keys()
                if not k.pinned and k.number is not None and not self.opening(k)
            ]
            return max(candidates, key=lambda k: k.last) if candidates else None

        def can_alloc(self) -> bool:
            if wrong == "no-quarantine":  # as if numbers kept for pinned keys did not count
                return self.held() - len(self.pinned_spares) < self.limit
            return super().can_alloc()

        def page_prot(self, r: RegionM) -> int:
            if wrong == "eager-parking" and r.key is not None and not self.opening(r.key):
                return 0  # as if a key were parked whenever no guard opens it
            return super().page_prot(r)

    with pytest.raises(AssertionError):
        run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
            Wrong,
            settings=settings(
                max_examples=200,
                stateful_step_count=40,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
