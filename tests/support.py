"""Helpers shared by the test suites: effects are checked through the OS, not our state."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The repository root: where ``python -m tests...`` finds the tests package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def maps() -> list[str]:
    with open("/proc/self/maps", encoding="utf-8") as f:
        return f.read().splitlines()


#: What /proc/PID/maps calls memfd_secret(2) memory: anonymous in all but name.
SECRETMEM = "/secretmem"


def anon_mappings() -> set[tuple[int, int, str]]:
    """(start, end, perms) of every mapping without a backing file name (memfd_secret
    memory counts as anonymous)."""
    out = set()
    for line in maps():
        parts = line.split()
        if len(parts) == 5 or parts[5] == SECRETMEM:  # no path: anonymous
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.add((start, end, parts[1]))
    return out


#: The C core runs under AddressSanitizer (tools/sanitize.sh preloads libasan).
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


# ASan's primary allocator on x86-64 lives in [0x600000000000, 0x640000000000).
_ASAN_ALLOCATOR_SPACE = (0x600000000000, 0x640000000000)


# glibc's malloc gives each extra arena heaps of HEAP_MAX_SIZE (64 MiB on 64-bit), aligned
# to their size: a read-write prefix that grows by mprotect and a PROT_NONE rest.  Threads
# create arenas when they meet contention, so whether one appears during a test is timing.
_MALLOC_HEAP_SIZE = 64 << 20


def _malloc_heaps(mappings: set[tuple[int, int, str]]) -> set[tuple[int, int, str]]:
    """The mappings that make up glibc malloc heaps: an aligned 64 MiB block tiled exactly
    by rw-p entries followed by ---p entries (the last may run on where the kernel merged
    it with a PROT_NONE neighbour)."""
    ordered = sorted(mappings)
    found: set[tuple[int, int, str]] = set()
    for i, first in enumerate(ordered):
        start = first[0]
        if start % _MALLOC_HEAP_SIZE or first[2] != "rw-p":
            continue
        end = start + _MALLOC_HEAP_SIZE
        block = [first]
        for m in ordered[i + 1 :]:
            if block[-1][1] >= end or m[0] != block[-1][1]:
                break
            block.append(m)
        perms = [m[2] for m in block]
        tiled = block[-1][1] == end or (block[-1][1] > end and perms[-1] == "---p")
        shaped = perms == sorted(perms, key=lambda p: p != "rw-p") and set(perms) <= {
            "rw-p",
            "---p",
        }
        if tiled and shaped:
            found.update(block)
    return found


def _thread_stack_size() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return soft if soft != resource.RLIM_INFINITY else 8 << 20


def _thread_stacks(mappings: set[tuple[int, int, str]]) -> set[tuple[int, int, str]]:
    """glibc thread stacks: a one-page ``---p`` guard right below an ``rw-p`` mapping of at
    least the default stack size (the kernel merges it with an ``rw-p`` neighbour: 9 MiB was
    seen in the PKU guest).  A thread started during a test may get a fresh one (glibc reuses
    the stacks of finished threads only once they are fully gone)."""
    page, size = os.sysconf("SC_PAGE_SIZE"), _thread_stack_size()
    by_start = {m[0]: m for m in mappings}
    found: set[tuple[int, int, str]] = set()
    for guard in mappings:
        stack = by_start.get(guard[1])
        if (
            guard[2] == "---p"
            and guard[1] - guard[0] == page
            and stack is not None
            and stack[2] == "rw-p"
            and stack[1] - stack[0] >= size
        ):
            found.update((guard, stack))
    return found


def new_anon_mappings(
    before: set[tuple[int, int, str]], after: set[tuple[int, int, str]]
) -> set[tuple[int, int, str]]:
    """Anonymous mappings in ``after`` that were not in ``before``.

    glibc malloc heaps (thread arenas) and thread stacks never count.  Under ASan, the
    sanitizer's own memory does not count either: its allocator reserves address space up
    front (PROT_NONE) and maps pieces of it as it grows, which splits existing entries; its
    primary allocator lives in a fixed range; and large blocks (128 KiB and up) get mappings
    of their own.
    """
    new = after - before - _malloc_heaps(after) - _thread_stacks(after)
    if not ASAN:
        return new
    lo, hi = _ASAN_ALLOCATOR_SPACE
    return {
        m
        for m in new
        if not any(b[0] <= m[0] and m[1] <= b[1] for b in before)
        and not (lo <= m[0] and m[1] <= hi)
        # ASan also maps small rw-p chunks of its own (seen: 4 KiB and 64 KiB, under load,
        # even at an address a closed region had just given back): under ASan only
        # protected leftovers count; the plain unit run keeps the full check.
        and m[2] != "rw-p"
    }


def proc_mem_read(address: int, n: int) -> bytes | int:
    """What /proc/self/mem gives for ``n`` bytes at ``address`` (it ignores page and key
    rights), or the errno it fails with (EIO for memfd_secret memory)."""
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        return os.pread(fd, n, address)
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(fd)


def join_os_thread(thread: threading.Thread, timeout: float = 60) -> None:
    """Join ``thread`` and wait until the kernel no longer lists it.  ``join()`` returns once
    the Python thread is done, a moment before the OS thread ends (its exit handlers run in
    between, pkeyguard's among them): until then a key pool must count it as alive, so a
    test that expects a retired number back waits for this first."""
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name} did not end"
    native = thread.native_id
    deadline = time.monotonic() + timeout
    while native is not None and os.path.exists(f"/proc/self/task/{native}"):
        assert time.monotonic() < deadline, f"{thread.name}: the OS thread did not end"
        time.sleep(0.001)


def perms_at(address: int) -> str:
    """The rwxp string of the mapping containing ``address`` ("" if unmapped)."""
    for line in maps():
        rng, perms = line.split()[:2]
        start, end = (int(x, 16) for x in rng.split("-"))
        if start <= address < end:
            return perms
    return ""


def smaps_field(address: int, field: str) -> list[str] | None:
    """The words after ``field:`` in /proc/self/smaps for the mapping holding ``address``."""
    current = False
    with open("/proc/self/smaps", encoding="utf-8") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = start <= address < end
            elif current and head and head[0] == f"{field}:":
                return head[1:]
    return None


def secret_key(secret: object) -> Any:
    """A Secret's own key, which nothing public exposes (issue 18, class 3): found through the
    collector's references of its association, for tests that check its hardware number."""
    import gc

    from pkeyguard import _core

    assoc = secret._assoc  # type: ignore[attr-defined]  # pyright: ignore
    found = [o for o in gc.get_referents(assoc) if isinstance(o, _core.Key)]
    assert len(found) == 1, found
    return found[0]


def pkey_at(address: int) -> int | None:
    """ProtectionKey of the mapping containing ``address``, from /proc/self/smaps."""
    words = smaps_field(address, "ProtectionKey")
    return int(words[0]) if words else None


class Syscalls:
    """The raw system calls the tests need, through libc (the library has no raw entry point
    for them).  Each raises OSError with the errno, like the library's own errors."""

    SYS_pkey_mprotect, SYS_pkey_alloc, SYS_pkey_free = 329, 330, 331

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._libc.mmap.restype = ctypes.c_void_p
        self._libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self._libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def _check(self, result: int, name: str) -> int:
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)} (from {name})")
        return result

    def _syscall(self, name: str, number: int, *args: int) -> int:
        ctypes.set_errno(0)
        c_args = [ctypes.c_ulong(a) for a in args]
        return self._check(self._libc.syscall(ctypes.c_long(number), *c_args), name)

    def pkey_alloc(self, flags: int, rights: int) -> int:
        return self._syscall("pkey_alloc", self.SYS_pkey_alloc, flags, rights)

    def pkey_free(self, key: int) -> None:
        self._syscall("pkey_free", self.SYS_pkey_free, key)

    def pkey_mprotect(self, address: int, length: int, prot: int, key: int) -> None:
        self._syscall("pkey_mprotect", self.SYS_pkey_mprotect, address, length, prot, key)

    def mprotect(self, address: int, length: int, prot: int) -> None:
        ctypes.set_errno(0)
        self._check(self._libc.mprotect(address, length, prot), "mprotect")

    def mmap_anon(self, length: int, prot: int) -> int:
        ctypes.set_errno(0)
        address = self._libc.mmap(None, length, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(address)

    def munmap(self, address: int, length: int) -> None:
        ctypes.set_errno(0)
        self._check(self._libc.munmap(address, length), "munmap")


syscalls = Syscalls()


@dataclass
class Child:
    returncode: int
    stdout: str
    stderr: str


def case_command(
    module: str, case: str, *, params: Mapping[str, object] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``case`` of the child module ``module`` (a
    dotted name) the way :func:`tests.adversarial.support.run_case` does, for a parent that
    must start the process itself: to give it a stdin, a terminal or a new session, or to
    start it through another program.  Run it with ``cwd=REPO_ROOT``."""
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)
    env["PKEYGUARD_BACKEND"] = os.environ.get("PKEYGUARD_BACKEND", "mprotect")
    env["PKEYGUARD_CASE_PARAMS"] = json.dumps(dict(params or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "tests.adversarial.run_case", module, case], env
