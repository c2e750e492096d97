"""Class 9 again (issue 18, class 13): the cyclic GC collecting secrets, regions and keys
from inside library calls never deadlocks, crashes or leaks, and the collections really
happen inside the calls.

The old version of this attack came in through ``name=`` (a ``str`` subclass whose dunders
ran ``gc.collect()``), but names are copied with ``str.__str__`` before anything else, so its
hooks never ran and it checked a plain run.  Here the collections come from code the library
really calls in the middle of its work: a ``from_chunks`` iterator, a ``from_stream``
``readinto`` and a ``from_writer`` function (inside the secret's ReadWrite guard), a
``hmac`` digest constructor, an allocator's ``on_before_unmap`` hook (inside ``close()``),
and, for the calls that run no user code, ``gc.set_threshold(1)`` so that the core's own
allocations start collections.  ``gc.callbacks`` counts every collection that starts while a
frame of ``pkeyguard`` is on the stack; the case asserts that count is above zero.
"""

from __future__ import annotations

import gc
import hashlib
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from pkeyguard import PkeyGuard, RegionGuard, Secret, allocator
from tests.adversarial.childlib import RW, assert_clean, params, snapshot

_PACKAGE = sys.modules["pkeyguard"].__file__.rsplit("/", 1)[0] + "/"  # type: ignore[union-attr]


class _Counter:
    """Hook calls, forced collections, and collections seen inside the library."""

    def __init__(self) -> None:
        self.calls = 0
        self.trigger = -1
        self.forced = 0
        self.inside = 0

    def hook(self) -> None:
        """Called from inside a library call: the trigger-th call runs a full collection."""
        n = self.calls
        self.calls += 1
        if n == self.trigger:
            self.forced += 1
            gc.collect()

    def tick(self) -> None:
        """A point that forces nothing (the collections come from the gc threshold)."""
        self.calls += 1

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Inside the library: a frame of pkeyguard on the stack, or the hook, which only the
        # library calls (from C, for the core's own calls: no Python frame of it shows).
        if phase != "start":
            return
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if code.co_filename.startswith(_PACKAGE) or code is _Counter.hook.__code__:
                self.inside += 1
                return
            frame = frame.f_back


def _garbage() -> None:
    """Secrets, regions and keys reachable only from reference cycles."""
    for _ in range(3):
        junk: list[object] = [Secret.from_bytes(bytearray(b"garbage secret"))]
        junk.append(junk)
        k = PkeyGuard()
        r = RegionGuard(64)
        k.associate(r)
        junk2: list[object] = [r, k]
        junk2.append(junk2)
        del junk, junk2, r, k


def _ops(c: _Counter) -> dict[str, Callable[[], None]]:
    def chunks() -> Iterator[bytes]:
        for size in (3000, 5000, 9000):  # the secret grows twice
            c.hook()
            yield b"c" * size

    class Stream:
        def __init__(self) -> None:
            self.left = 3 * allocator.PAGE_SIZE

        def readinto(self, buf: memoryview) -> int:
            c.hook()  # inside the ReadWrite guard of the secret being filled
            n = min(len(buf), self.left, 1500)
            buf[:n] = b"s" * n
            self.left -= n
            return n

    def write(buf: memoryview) -> None:
        c.hook()  # inside the guard
        buf[:] = b"w" * len(buf)

    def digest() -> Any:
        c.hook()
        return hashlib.sha256()

    def before_unmap(address: int, length: int) -> None:
        c.hook()  # inside close(), after zeroing, before unmapping

    def hmac() -> None:
        s = Secret.from_bytes(bytearray(b"k" * 32))
        s.hmac(b"message", digest)
        s.close()

    def region_close() -> None:
        RegionGuard(64, allocator=allocator.Secure(on_before_unmap=before_unmap)).close()

    def secret_close() -> None:
        Secret(64, allocator=allocator.Secure(on_before_unmap=before_unmap)).close()

    def associate_and_guards() -> None:
        # No user code runs here: gc.set_threshold(1) makes the core's allocations collect.
        old = gc.get_threshold()
        gc.enable()
        gc.set_threshold(1, 1, 1)
        try:
            for _ in range(3):
                c.tick()
                region = RegionGuard(64)
                key = PkeyGuard()
                assoc = key.associate(region)
                with assoc.set_access_rights(RW) as g:
                    g.mut_ref_guard()[0] = 1
                assoc.disassociate()
                key.associate(region)
                region.close()
                key.close()
                s = Secret.from_bytes(bytearray(b"y" * 20))
                with s.reveal() as b:
                    bytes(b)
                s.close()
        finally:
            gc.set_threshold(*old)
            gc.disable()

    return {
        "Secret.from_chunks()": lambda: Secret.from_chunks(chunks()).close(),
        "Secret.from_stream()": lambda: Secret.from_stream(Stream()).close(),
        "Secret.from_writer()": lambda: Secret.from_writer(5000, write).close(),
        "Secret.hmac()": hmac,
        "RegionGuard.close()": region_close,
        "Secret.close()": secret_close,
        "associate()/guards/reveal() at gc threshold 1": associate_and_guards,
    }


def case_gc_forced_inside_library_calls() -> None:
    name = params()["op"]
    c = _Counter()
    op = _ops(c)[name]
    snap = snapshot()
    gc.callbacks.append(c.on_gc)
    gc.disable()
    try:
        _garbage()
        op()  # a dry run counts the hook calls
        points = c.calls
        for t in range(min(points, params()["max_points"])):
            _garbage()
            c.calls, c.trigger = 0, t
            op()
    finally:
        gc.enable()
        gc.callbacks.remove(c.on_gc)
    print(
        f"{name}: {points} hook calls, {c.forced} collections forced, "
        f"{c.inside} collections started inside the library"
    )
    assert points > 0, f"{name}: no hook ran inside the library call"
    assert c.inside > 0, f"{name}: no collection happened inside the library call"
    assert_clean(snap, f"{name} with gc inside")
