"""Child program of ``tests/unit/test_support.py``: the leak check's filter in a fresh
interpreter whose first extra thread calls malloc (glibc gives it a new arena)."""

from __future__ import annotations

import ctypes
import mmap
import threading

from tests.childhelpers import say
from tests.support import _malloc_heaps, anon_mappings, new_anon_mappings  # pyright: ignore[reportPrivateUsage]


def case_thread_arena_is_not_a_leak_but_a_new_mapping_is() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = anon_mappings()
    t = threading.Thread(target=lambda: libc.malloc(4096))
    t.start()
    t.join()
    ours = mmap.mmap(-1, 3 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    after = anon_mappings()
    heaps = _malloc_heaps(after - before)
    new = new_anon_mappings(before, after)
    say(len(heaps), sum(e - s for s, e, _ in heaps) >> 20)
    size = 3 * mmap.PAGESIZE
    say(not heaps & new, any(e - s == size and p == "r--p" for s, e, p in new))
    ours.close()
