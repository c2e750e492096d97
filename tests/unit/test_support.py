"""The leak check's own filter: glibc malloc heaps are excused, our mappings are not."""

from __future__ import annotations

import os

from tests.support import run_child

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_thread_arena_is_not_a_leak_but_a_new_mapping_is() -> None:
    # A fresh interpreter (no sanitizer preloaded) whose first extra thread calls malloc:
    # glibc gives that thread a new arena, i.e. a new 64 MiB aligned heap.
    child = run_child(
        f"""
        import ctypes, mmap, sys, threading
        sys.path.insert(0, {REPO!r})
        from tests.support import _malloc_heaps, anon_mappings, new_anon_mappings
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        before = anon_mappings()
        t = threading.Thread(target=lambda: libc.malloc(4096))
        t.start(); t.join()
        ours = mmap.mmap(-1, 3 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        after = anon_mappings()
        heaps = _malloc_heaps(after - before)
        new = new_anon_mappings(before, after)
        print(len(heaps), sum(e - s for s, e, _ in heaps) >> 20)
        size = 3 * mmap.PAGESIZE
        print(not heaps & new, any(e - s == size and p == "r--p" for s, e, p in new))
        """,
        env={"LD_PRELOAD": ""},
    )
    assert child.returncode == 0, child.stderr
    counts, verdict = child.stdout.splitlines()
    n_heap_maps, heap_mib = map(int, counts.split())
    assert n_heap_maps >= 1 and heap_mib >= 64, child.stdout
    assert verdict == "True True", child.stdout
