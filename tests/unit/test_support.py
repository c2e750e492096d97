"""The leak check's own filter: glibc malloc heaps are excused, our mappings are not."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

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


def _child_modules() -> list[str]:
    """The child programs of the unit and hardware suites, and this suite's s/h/v attacks."""
    names = []
    for package, prefixes in (
        ("tests.unit.children", ("",)),
        ("tests.hw.children", ("",)),
        ("tests.adversarial.children", ("s_", "h_", "v_")),
    ):
        path = importlib.import_module(package).__path__
        names += [
            f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if m.name.startswith(prefixes)
        ]
    return sorted(names)


@pytest.mark.parametrize("name", _child_modules())
def test_every_child_module_imports(name: str) -> None:
    # A child module runs only in a child process (the hardware ones only in the PKU guest):
    # a bad import would otherwise surface there first.
    module = importlib.import_module(name)
    assert any(n.startswith("case_") for n in dir(module)), name
