"""The leak check's own filter: glibc malloc heaps are excused, our mappings are not."""

from __future__ import annotations

from tests.adversarial.support import run_case


def test_thread_arena_is_not_a_leak_but_a_new_mapping_is() -> None:
    # A fresh interpreter (no sanitizer preloaded) whose first extra thread calls malloc:
    # glibc gives that thread a new arena, i.e. a new 64 MiB aligned heap.
    child = run_case(
        "tests.unit.children.h_support",
        "case_thread_arena_is_not_a_leak_but_a_new_mapping_is",
        env={"LD_PRELOAD": ""},
    )
    assert child.returncode == 0, child.stderr
    counts, verdict = child.stdout.splitlines()[:2]
    n_heap_maps, heap_mib = map(int, counts.split())
    assert n_heap_maps >= 1 and heap_mib >= 64, child.stdout
    assert verdict == "True True", child.stdout
