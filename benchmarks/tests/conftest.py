"""The benchmark's tests run on the mprotect backend (deterministic, and the backend CI has)
unless PKEYGUARD_BACKEND says otherwise, in process, against the installed pkeyguard and
pkeyguard_bench."""

from __future__ import annotations

import gc
import mmap
import os
import threading
from collections.abc import Iterator

import pytest

os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")

import pkeyguard
from pkeyguard import _core

_HEAP = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: thread arenas are aligned to it


def anon_mappings() -> set[tuple[int, int, str]]:
    """(start, end, perms) of every mapping of this process without a file name."""
    out = set()
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.add((start, end, parts[1]))
    return out


def _incidental(m: tuple[int, int, str], rw: set[tuple[int, int, str]]) -> bool:
    """Memory the interpreter and libc map on their own: allocator arenas and thread stacks
    (read-write, 256 KiB and up), a stack's guard page (one page below a read-write
    mapping), and the
    reserved rest of a malloc heap (above a read-write prefix aligned to 64 MiB)."""
    start, end, perms = m
    if perms == "rw-p":
        return end - start >= 1 << 18
    if perms != "---p":
        return False
    return any(
        (r[0] == end and end - start == mmap.PAGESIZE)
        or (r[1] == start and r[0] % _HEAP == 0 and end - r[0] <= _HEAP)
        for r in rw
    )


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a key, an active guard or a mapping of its own behind."""
    threads = [threading.Thread(target=lambda: None) for _ in range(4)]
    for t in threads:  # glibc caches finished threads' stacks: warm that cache first
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    before = anon_mappings()
    keys = _core.live_key_count()
    yield
    gc.collect()
    assert _core.thread_guards() == [], "a guard was left active on this thread"
    assert _core.live_key_count() == keys, "a key was leaked"
    after = anon_mappings()
    rw = {m for m in after if m[2] == "rw-p"}
    leaked = {m for m in after - before if not _incidental(m, rw)}
    assert not leaked, f"mappings left behind: {sorted(leaked)}"


@pytest.fixture
def backend_name() -> str:
    return pkeyguard.backend().name
