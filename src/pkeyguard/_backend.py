"""Backend choice: one place decides between ``pku`` and ``mprotect``, and says why.

The ``pku`` backend needs an x86-64 CPU with PKU, a kernel that enabled it (OSPKE) and a
``pkey_alloc`` that works; anything less selects ``mprotect``.  ``PKEYGUARD_BACKEND=pku``
or ``=mprotect`` forces one; forcing ``pku`` where it cannot work raises
:class:`PkuUnavailableError` on first use instead of falling back.
"""

from __future__ import annotations

import errno
import os
import platform
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from . import _core, allocator
from ._errors import PkeyguardError, PkuUnavailableError
from ._permissions import PkeyPermissions

__all__ = ["BackendInfo", "KeyStats", "backend", "probe_pku"]

BackendName = Literal["pku", "mprotect"]
K = TypeVar("K", bound=_core.Key)

PKU_GUARANTEES = (
    "rights are per thread: a guard opens the memory to the thread that entered it only",
    "switching rights is one WRPKRU instruction: no system call, no TLB flush, while the key "
    "holds a hardware key; keys are virtual, so any number of them can exist: a key without "
    "one is parked (its pages closed to every thread) and its next guard re-tags them",
    "any access outside a guard that allows it faults in hardware (SIGSEGV, SEGV_PKUERR)",
    "the kernel honours the rights for its own copies (read(2)/write(2) into the region)",
)
MPROTECT_GUARANTEES = (
    "rights are process-wide, not per thread: while any thread holds a guard that allows an "
    "access, every thread has it",
    "each switch that changes the key's effective rights is an mprotect(2) of every region "
    "of the key (a system call, a page-table walk and a TLB flush, with shootdowns when "
    "other threads run)",
    "a key's effective rights are the most permissive of all threads' innermost guards on "
    "it, or its initial rights when no guard is active; a correct program never faults",
    "any access while no guard allows it faults (SIGSEGV, SEGV_ACCERR)",
)


@dataclass(frozen=True)
class KeyStats:
    """A snapshot of the keys: how many exist, the hardware keys behind them, and what the
    virtual keys cost so far (counters since the process started).

    On ``mprotect`` every key is logical and the hardware fields are 0.
    """

    logical: int
    """Open keys (PkeyGuards, and one per open Secret)."""
    hardware_limit: int = 0
    """The most hardware keys pkeyguard will hold at once (x86 has 15)."""
    hardware_held: int = 0
    """Hardware keys pkeyguard holds (allocated with ``pkey_alloc``; kept for the life of the
    process, since a thread may still have one open)."""
    spare: int = 0
    """Held hardware keys that no key holds now, ready for the next NoAccess key."""
    pinned: int = 0
    """Held for life by keys created with initial rights other than NoAccess."""
    quarantined: int = 0
    """Held but unused, kept for keys with initial rights only: a closed such key's number
    (another thread may have inherited its rights)."""
    parked: int = 0
    """Keys holding no hardware key now: their pages are closed to every thread."""
    opening: int = 0
    """Keys with a ReadOnly or ReadWrite guard active on some thread (never evicted)."""
    switches: int = 0
    """Guard entries on pool keys."""
    hits: int = 0
    """Entries that found the key holding a hardware key (one WRPKRU)."""
    misses: int = 0
    """Entries that had to take a hardware key and re-tag the key's pages."""
    evictions: int = 0
    """Keys parked to free their hardware key for another."""
    retags: int = 0
    """Regions tagged with a hardware key by a miss (one ``pkey_mprotect`` each)."""
    parks: int = 0
    """Regions parked by an eviction (one ``pkey_mprotect`` each)."""
    allocs: int = 0
    """``pkey_alloc`` calls made by the pool."""
    exhausted: int = 0
    """Entries (and creations of keys with initial rights) refused with KeyExhaustedError."""
    syncs: int = 0
    """Guard entries that closed the thread's stale numbers after numbers changed owner."""

    @classmethod
    def _of_pool(cls, mode: int) -> KeyStats:
        s = _core._pool_stats(mode)
        return cls(
            logical=s["logical"],
            hardware_limit=s["limit"],
            hardware_held=s["held"],
            spare=s["spare"],
            pinned=s["pinned"],
            quarantined=s["quarantined"],
            parked=s["parked"],
            opening=s["opening"],
            switches=s["switches"],
            hits=s["hits"],
            misses=s["misses"],
            evictions=s["evictions"],
            retags=s["retags"],
            parks=s["parks"],
            allocs=s["allocs"],
            exhausted=s["exhausted"],
            syncs=s["syncs"],
        )


@dataclass(frozen=True)
class BackendInfo:
    """Which backend is active and what it can promise."""

    name: BackendName
    reason: str
    per_thread: bool
    hardware_keys: int
    forced: bool
    guarantees: tuple[str, ...] = field(repr=False)

    @property
    def max_keys(self) -> int | None:
        """Keys that can exist at once: ``None``, limited only by memory (on ``pku`` keys are
        virtual: :attr:`hardware_keys` of them hold a hardware key at a time)."""
        return None

    @property
    def keys(self) -> KeyStats:
        """The keys now, the hardware keys behind them, and the eviction counters."""
        if self.name == "pku":
            return KeyStats._of_pool(_core.MODE_PKU)
        return KeyStats(logical=_core.live_key_count())

    @property
    def secret_memory(self) -> Literal["memfd_secret", "mmap"]:
        """What a Secret's memory is (``allocator.Secure(backing="auto")``): ``memfd_secret``
        pages, or private ``mmap`` pages where the kernel has none."""
        return allocator.secret_memory()[0]

    @property
    def secret_memory_reason(self) -> str:
        """Why :attr:`secret_memory` is what it is."""
        return allocator.secret_memory()[1]


#: ``platform.machine()`` of the machines whose protection keys pkeyguard uses (x86 PKU).
X86_64_MACHINES = ("x86_64", "AMD64")


def no_pku_reason(machine: str) -> str:
    """Why a machine that is not x86-64 has no pku backend."""
    if machine in ("aarch64", "arm64"):
        # The core's _arch_none.h on arm64: no POR_EL0 access, no signal-frame reader.
        return (
            "arm64 has no PKU; its protection keys (POE, the Permission Overlay Extension) "
            "are not supported by pkeyguard yet, only x86-64 PKU"
        )
    return f"not x86-64 (machine is {machine}); only x86 PKU is supported"


def probe_pku() -> tuple[bool, str]:
    """(usable, reason) for the pku backend; never executes RDPKRU/WRPKRU."""
    machine = platform.machine()
    if machine not in X86_64_MACHINES:
        return False, no_pku_reason(machine)
    pku, ospke = _core.cpuid_flags()
    if not pku:
        return False, "cpu lacks pku (CPUID.7.0:ECX bit 3 is clear)"
    if not ospke:
        return False, "ospke off: the CPU has pku but the kernel did not enable it"
    failed = _core.probe_pkey_alloc()  # allocates access-disabled and frees at once
    if failed:
        name = errno.errorcode.get(failed, str(failed))
        return False, f"pkey_alloc: {name} ({os.strerror(failed)})"
    return True, "cpu has pku, kernel enabled it (ospke) and pkey_alloc works"


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend as the Python layer sees it: its name, and the core's mode for its keys.

    One class, not one per backend: everything that differs between the backends (what a key
    number is, how a switch changes rights: WRPKRU, a thread-local PKRU or mprotect of every
    region; how a thread's rights are read back; how memory is released) is done by the C
    core, keyed by the mode each key is created with.  A class per backend here could only
    repeat that mode (three such classes once differed by nothing else), and would promise a
    seam in Python that does not exist.  A new backend (arm64 POE, say) is a mode in the core
    plus a probe and a :class:`BackendInfo` in this module, not a class.
    """

    name: BackendName
    mode: int

    def new_key(self, cls: type[K], rights: PkeyPermissions) -> K:
        # The core raises KeyExhaustedError itself, when no hardware key can be taken.
        return _core.Key.__new__(cls, -1, self.mode, rights.level)

    def live_keys(self) -> int:
        return _core.live_key_count()


#: Virtual keys over the hardware keys (the core's pool, ``_keypool.h``): a key holds a
#: hardware key while it is used, and is parked when evicted; switches are WRPKRU in C.
PKU = Backend("pku", _core.MODE_PKU)

#: The pku backend's key pool with PKU simulated (``MODE_SIM``): PKRU is a thread-local
#: value and tags are ``mprotect`` calls.  It protects nothing a thread could not reach
#: anyway (a held key's pages are open to every thread): it exists so that the pool's policy
#: can be tested and measured on machines without PKU.  Never selected by :func:`backend`;
#: tests and the benchmark make keys with ``SIMULATED.new_key(...)``.
SIMULATED = Backend("pku", _core.MODE_SIM)

#: Logical keys; a switch mprotects every region of the key (process-wide).
MPROTECT = Backend("mprotect", _core.MODE_MPROTECT)


_selected: dict[str, tuple[BackendInfo, Backend]] = {}


def _select() -> tuple[BackendInfo, Backend]:
    wanted = os.environ.get("PKEYGUARD_BACKEND", "").strip().lower()
    if wanted not in ("", "auto", "pku", "mprotect"):
        raise PkeyguardError(
            f"PKEYGUARD_BACKEND={wanted!r} is not a backend: use 'pku', 'mprotect' or unset it"
        )
    forced = wanted in ("pku", "mprotect")
    if wanted == "mprotect":
        return _mprotect_info("forced by PKEYGUARD_BACKEND=mprotect", forced=True)
    ok, reason = probe_pku()
    if ok:
        _core.enable_pku()
        info = BackendInfo("pku", reason, True, 15, forced, PKU_GUARANTEES)
        return info, PKU
    if wanted == "pku":
        raise PkuUnavailableError(
            f"PKEYGUARD_BACKEND=pku, but PKU cannot work here: {reason}. Run on a CPU with "
            "PKU (Intel Skylake-SP or newer, AMD Zen 3 or newer) and a kernel built with "
            "CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS, or under `pkeyguard-vm` (tools/vm in "
            "pkeyguard's source repository), or unset PKEYGUARD_BACKEND to use the mprotect "
            "backend"
        )
    return _mprotect_info(reason, forced=False)


def _mprotect_info(reason: str, *, forced: bool) -> tuple[BackendInfo, Backend]:
    return BackendInfo("mprotect", reason, False, 0, forced, MPROTECT_GUARANTEES), MPROTECT


def active() -> tuple[BackendInfo, Backend]:
    """The selected backend, chosen once per process on first use.

    No lock: a finalizer run by the garbage collector in the middle of the choice may need
    the backend too, and would wait forever on a lock this thread holds.  Threads that choose
    at the same time choose the same; the first result stored is the one every caller gets.
    """
    selected = _selected.get("backend")
    if selected is None:
        selected = _selected.setdefault("backend", _select())  # atomic under the GIL
    return selected


def backend() -> BackendInfo:
    """Which backend is active, why, and what it guarantees."""
    return active()[0]
