"""What the two state machines share (tests/unit/test_state_machine.py, the guards and
views; tests/unit/test_virtual_keys.py, the key pool): rights levels and register bits, the
maps' rights string, and running a step on one of the model's threads.  The hardware
variants in tests/hw subclass those machines and use the same."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from hypothesis import event

from pkeyguard import _core
from tests.support import join_os_thread

__all__ = [
    "NONE",
    "PKRU_BITS",
    "READ",
    "WRITE",
    "OnThreads",
    "Worker",
    "bits_of",
    "level_of_bits",
    "prot_string",
]

R = TypeVar("R")

NONE, READ, WRITE = 0, 1, 2  # rights levels, as in the C core
PKRU_BITS = {NONE: 1, READ: 2, WRITE: 0}  # access-disable, write-disable
PROT_READ, PROT_WRITE, PROT_EXEC = _core.PROT_READ, _core.PROT_WRITE, _core.PROT_EXEC


def bits_of(pkru: int, number: int) -> int:
    """The two bits of key ``number`` in the register value ``pkru``."""
    return (pkru >> (2 * number)) & 3


def level_of_bits(bits: int) -> int:
    """The rights level two register bits give (access-disable wins over write-disable)."""
    return NONE if bits & 1 else READ if bits & 2 else WRITE


def prot_string(prot: int) -> str:
    """The rights column /proc/self/maps shows for page protection ``prot`` (private)."""
    return (
        ("r" if prot & PROT_READ else "-")
        + ("w" if prot & PROT_WRITE else "-")
        + ("x" if prot & PROT_EXEC else "-")
        + "p"
    )


class Worker:
    """A thread that runs the callables it is sent, one at a time, and returns the result."""

    def __init__(self, name: str) -> None:
        self._inbox: queue.SimpleQueue[
            tuple[Callable[[], Any], queue.SimpleQueue[tuple[bool, Any]]] | None
        ] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()
        self.ident: int = self.run(threading.get_ident)

    def _loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            fn, reply = item
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))
            del fn, item  # drop references to the step's objects now

    def run(self, fn: Callable[[], R]) -> R:
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._inbox.put((fn, reply))
        try:
            ok, value = reply.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"{self.thread.name} did not answer within 60 s") from None
        if ok:
            return cast(R, value)
        raise value

    def stop(self) -> None:
        self._inbox.put(None)
        join_os_thread(self.thread)


class OnThreads:
    """A machine's steps on its threads: thread 0 is this one, thread ``t`` the worker
    ``workers[t - 1]``."""

    workers: list[Worker]

    def on(self, t: int, fn: Callable[[], R]) -> R:
        return fn() if t == 0 else self.workers[t - 1].run(fn)

    def expect(
        self, t: int, fn: Callable[[], R], error: type[BaseException] | None, what: str
    ) -> R | None:
        """``fn()`` on thread ``t``, which must raise exactly ``error`` (None: succeed)."""
        event(f"{what.split()[0].split('(')[0]} -> {error.__name__ if error else 'ok'}")
        try:
            value = self.on(t, fn)
        except Exception as exc:
            if error is None:
                raise AssertionError(f"{what} on thread {t}: unexpected {exc!r}") from exc
            assert type(exc) is error, (
                f"{what} on thread {t}: expected {error.__name__}, got {exc!r}"
            )
            return None
        assert error is None, f"{what} on thread {t}: expected {error.__name__}, it succeeded"
        return value
