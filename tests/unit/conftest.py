"""The unit suite runs on the mprotect backend on every machine (deterministic, and
it is the backend CI has); the pku backend is covered by tests/hw in the PKU guest."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator

import pytest

os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")

import pkeyguard
from pkeyguard import _backend, _core
from tests.support import anon_mappings, new_anon_mappings


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a mapping, a key or a guard behind."""
    _warm_thread_stacks()
    gc.collect()
    before_maps = anon_mappings()
    before_keys = _backend.active()[1].live_keys()
    yield
    gc.collect()
    assert _core.thread_guards() == [], "a guard was left active on this thread"
    assert _backend.active()[1].live_keys() == before_keys, "a key was leaked"
    # The allocator's arenas (rw-p, >= 256 KiB) come and go with Python objects; anything
    # else that is new — a region, a changed protection — is ours.
    leaked = {
        m
        for m in new_anon_mappings(before_maps, anon_mappings())
        if not (m[2] == "rw-p" and m[1] - m[0] >= 1 << 18)
    }
    assert not leaked, f"mappings left behind: {sorted(leaked)}"


def _warm_thread_stacks() -> None:
    # glibc keeps the stacks of finished threads for reuse; start a few once so that a
    # test's threads reuse them instead of looking like leaked mappings.
    threads = [threading.Thread(target=lambda: None) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def backend_name() -> str:
    return pkeyguard.backend().name
