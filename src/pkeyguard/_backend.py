"""Backend choice: one place decides between ``pku`` and ``mprotect``, and says why.

The ``pku`` backend needs an x86-64 CPU with PKU, a kernel that enabled it (OSPKE) and a
``pkey_alloc`` that works; anything less selects ``mprotect``.  ``PKEYGUARD_BACKEND=pku``
or ``=mprotect`` forces one; forcing ``pku`` where it cannot work raises
:class:`PkuUnavailableError` on first use instead of falling back.
"""

from __future__ import annotations

import errno
import itertools
import os
import platform
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from . import _core, allocator
from ._errors import KeyExhaustedError, MprotectError, PkeyguardError, PkuUnavailableError
from ._permissions import LEVEL_TO_PERMISSION, PkeyPermissions

__all__ = ["BackendInfo", "backend", "probe_pku"]

BackendName = Literal["pku", "mprotect"]
K = TypeVar("K", bound=_core.Key)

PKU_GUARANTEES = (
    "rights are per thread: a guard opens the memory to the thread that entered it only",
    "switching rights is one WRPKRU instruction: no system call, no TLB flush",
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
        """Keys that can exist at once (``None``: limited only by memory)."""
        return self.hardware_keys if self.name == "pku" else None

    @property
    def secret_memory(self) -> Literal["memfd_secret", "mmap"]:
        """What a Secret's memory is (``allocator.Secure(backing="auto")``): ``memfd_secret``
        pages, or private ``mmap`` pages where the kernel has none."""
        return allocator.secret_memory()[0]

    @property
    def secret_memory_reason(self) -> str:
        """Why :attr:`secret_memory` is what it is."""
        return allocator.secret_memory()[1]


def probe_pku() -> tuple[bool, str]:
    """(usable, reason) for the pku backend; never executes RDPKRU/WRPKRU."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return False, f"not x86-64 (machine is {machine}); only x86 PKU is supported"
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


class Backend(Protocol):
    """What pkeyguard needs from a backend (one class per backend, like psutil).

    The core does the system calls and keeps the state; a backend decides what a key is
    (a hardware key or a logical number) and how to read a thread's rights.
    """

    name: BackendName

    def new_key(self, cls: type[K], rights: PkeyPermissions) -> K: ...
    def current_rights(self, key: _core.Key) -> PkeyPermissions: ...
    def live_keys(self) -> int: ...


class PkuBackend:
    """Hardware keys: pkey_alloc/pkey_mprotect/pkey_free; switches are WRPKRU in C."""

    name: BackendName = "pku"

    def new_key(self, cls: type[K], rights: PkeyPermissions) -> K:
        try:
            return _core.Key.__new__(cls, -1, _core.MODE_PKU, rights.level)  # pkey_alloc in C
        except MprotectError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            err = KeyExhaustedError(
                errno.ENOSPC,
                "no protection key is free: x86 has 15 allocatable keys (key 0 is the "
                f"default); this process holds {_core.live_key_count()} through pkeyguard. "
                "Close a PkeyGuard you no longer need, or share a key between regions",
            )
            err.syscall = "pkey_alloc"
            raise err from None

    def current_rights(self, key: _core.Key) -> PkeyPermissions:
        bits = (_core.rdpkru() >> (2 * key.key)) & 3
        return PkeyPermissions.from_pkru_bits(bits)

    def live_keys(self) -> int:
        return _core.live_key_count()


_numbers = itertools.count(1)  # logical key numbers; next() is atomic under the GIL


class MprotectBackend:
    """Logical keys; a switch mprotects every region of the key (process-wide)."""

    name: BackendName = "mprotect"

    def new_key(self, cls: type[K], rights: PkeyPermissions) -> K:
        return _core.Key.__new__(cls, next(_numbers), _core.MODE_MPROTECT, rights.level)

    def current_rights(self, key: _core.Key) -> PkeyPermissions:
        return LEVEL_TO_PERMISSION[key._effective_level]

    def live_keys(self) -> int:
        return _core.live_key_count()


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
        return info, PkuBackend()
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
    return BackendInfo("mprotect", reason, False, 0, forced, MPROTECT_GUARANTEES), (
        MprotectBackend()
    )


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
