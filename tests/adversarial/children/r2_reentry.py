"""Issue 18, class 1: Python code that the core runs in the middle of a change.

Leaving a guard, leaving or entering ``isolated()`` and closing a key change the core's
state in several steps.  If Python code runs between two of them (an error class's
``__init__``, a ``__repr__``, a finalizer the collector runs when the error object is
allocated) and re-enters, exits or closes what is being changed, the core must still be
consistent afterwards: every guard on this thread's stack active and counted once, the pages
as the core says they are, and every guard exits cleanly.

Each case arms a one-shot sabotage ``ACTION`` (``params()["action"]``) that fires from the
first place Python code runs: every pkeyguard error class's ``__init__`` (patched), the
``__repr__`` of the guards (a private ``_core.Guard`` subclass), and the finalizer of a
garbage cycle the collector (threshold 1) frees at the next tracked allocation.  Each case
asserts that the action fired.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import sys
from collections.abc import Callable
from typing import Any

import pkeyguard
from pkeyguard import (
    GuardOrderError,
    GuardStateError,
    KeyStateError,
    MprotectError,
    PkeyGuard,
    PkeyguardError,
    RegionGuard,
    ViewError,
    _core,
    isolated,
)
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, RW, params
from tests.support import perms_at

PROT = {0: "---p", 1: "r--p", 2: "rw-p"}


class Trap:
    """A one-shot action, fired from the first Python code the core runs."""

    def __init__(self) -> None:
        self.action: Callable[[], object] | None = None
        self.fired = 0
        self.outcome = ""

    def arm(self, action: Callable[[], object]) -> None:
        self.action = action

    def fire(self) -> None:
        action, self.action = self.action, None
        if action is None:
            return
        self.fired += 1
        try:
            action()
            self.outcome = "done"
        except PkeyguardError as exc:
            self.outcome = type(exc).__name__


TRAP = Trap()


def _patch_error_classes() -> None:
    for name in pkeyguard._errors.__all__:
        cls = getattr(pkeyguard, name)
        original = cls.__init__

        def init(self: BaseException, *args: Any, _original: Any = original) -> None:
            TRAP.fire()
            _original(self, *args)

        cls.__init__ = init


class EvilGuard(_core.Guard):
    """A guard whose repr (used in the core's messages) is Python code."""

    def __repr__(self) -> str:
        TRAP.fire()
        return "<EvilGuard>"


class Bomb:
    """Garbage in a cycle: the collector frees it at its next run, which fires the trap."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        TRAP.fire()


def set_bomb() -> None:
    """Fire from the next collection: at the next tracked allocation (threshold 1)."""
    gc.collect()
    gc.disable()
    Bomb()
    gc.set_threshold(1)
    gc.enable()


def defuse() -> None:
    gc.disable()
    gc.collect()
    gc.set_threshold(700)
    gc.enable()


class Scene:
    """Three keys with a region each; guards made as EvilGuard (Python repr)."""

    def __init__(self, base: Any = NA) -> None:
        self.keys = [PkeyGuard(base) for _ in range(3)]
        self.regions = [RegionGuard(ctypes.c_uint64) for _ in range(3)]
        self.assocs = [k.associate(r) for k, r in zip(self.keys, self.regions, strict=True)]
        self.extra_key = PkeyGuard(NA)
        self.extra_region = RegionGuard(64)
        self.extra_assoc = self.extra_key.associate(self.extra_region)
        self.left_open: list[Any] = []
        self.made: list[Any] = []
        self.refs: list[int] = []

    def guard(self, i: int, level: int = 2) -> Any:
        g = self.assocs[i]._guard(level, EvilGuard)
        self.made.append(g)
        return g

    def mark(self) -> None:
        """Remember the guards' reference counts (compared again after unwinding)."""
        self.refs = [sys.getrefcount(g) for g in self.made]

    def action(self, name: str, exiting: Any) -> Callable[[], object]:
        """The sabotage named ``name``; ``exiting`` is the guard (or group) being changed."""

        def reenter() -> None:
            exiting.__enter__()

        def exit_top() -> None:
            stack = _core.thread_guards()
            if stack:
                stack[0].__exit__(None, None, None)

        def enter_new() -> None:
            g = self.extra_assoc.set_access_rights(RW)
            g.__enter__()
            self.left_open.append(g)

        def close_others() -> None:
            self.extra_region.close()
            self.extra_key.close()

        def enter_isolated() -> None:
            iso = isolated()
            iso.__enter__()
            self.left_open.append(iso)

        return {
            "reenter": reenter,
            "exit_top": exit_top,
            "enter_new": enter_new,
            "close_others": close_others,
            "isolated": enter_isolated,
        }[name]

    def check(self, label: str) -> None:
        """Bookkeeping matches: each guard on the stack active, counted once per key; pages
        as the core says (mprotect backend)."""
        stack = _core.thread_guards()
        assert len(set(map(id, stack))) == len(stack), f"{label}: a guard twice on the stack"
        for g in stack:
            assert g.active, f"{label}: inactive guard on the stack: {g!r}"
        for k, r in zip(self.keys, self.regions, strict=True):
            on_stack = sum(1 for g in stack if g.key is k)
            assert k.active_guards == on_stack, (label, k, k.active_guards, on_stack)
            if MPROTECT and not r.closed:
                assert perms_at(r.address) == PROT[k._effective_level], (
                    label,
                    perms_at(r.address),
                    k._effective_level,
                )

    def unwind(self, label: str) -> None:
        """Leave everything, innermost first, as a program would: no error, no crash."""
        failinject_reset()
        self.check(label + " (before unwinding)")
        while True:
            stack = _core.thread_guards()
            if not stack:
                break
            stack[0].__exit__(None, None, None)
        for obj in self.left_open:
            with contextlib.suppress(PkeyguardError):
                obj.__exit__(None, None, None)
        self.check(label + " (after unwinding)")
        for k, r in zip(self.keys, self.regions, strict=True):
            assert k.active_guards == 0, (label, k)
            if MPROTECT and not r.closed:  # closed again (class 2: exits fail closed)
                assert perms_at(r.address) == PROT[k._base_level], (label, perms_at(r.address))
        now = [sys.getrefcount(g) for g in self.made]
        assert now == self.refs, (label, "a reference leaked or was dropped twice", now, self.refs)
        for region in self.regions:
            region.close()
        self.extra_region.close()
        for key in (*self.keys, self.extra_key):
            key.close()


def failinject_reset() -> None:
    with contextlib.suppress(AssertionError):
        failinject.reset()


def _setup() -> str:
    _patch_error_classes()
    if params().get("bomb"):
        set_bomb()
    return str(params()["action"])


def case_exit_with_live_export() -> None:
    """Guard.__exit__ pops the guard, then builds its ViewError (a memoryview outlived the
    block): the repr in the message, the error's __init__, run after the pop."""
    scene = Scene()
    outer, inner = scene.guard(0), scene.guard(1)
    scene.mark()
    outer.__enter__()
    inner.__enter__()
    mv = memoryview(inner._new_view(True))
    TRAP.arm(scene.action(_setup(), inner))
    with contextlib.suppress(ViewError):
        inner.__exit__(None, None, None)
    defuse()
    mv.release()
    assert TRAP.fired == 1, "the sabotage never ran"
    scene.unwind("exit with a live export")


def case_exit_out_of_order() -> None:
    """outer.__exit__ while inner is active: both are popped, then GuardOrderError is built
    (reprs of both guards, the error's __init__)."""
    scene = Scene()
    outer, inner = scene.guard(0), scene.guard(1)
    scene.mark()
    outer.__enter__()
    inner.__enter__()
    TRAP.arm(scene.action(_setup(), outer))
    with contextlib.suppress(GuardOrderError):
        outer.__exit__(None, None, None)
    defuse()
    assert TRAP.fired == 1, "the sabotage never ran"
    scene.unwind("out-of-order exit")


def case_exit_whose_mprotect_fails() -> None:
    """The exit's mprotect fails (every call from here on): MprotectError is built (its
    __init__, and the allocation of the error, which runs the collector)."""
    assert MPROTECT
    scene = Scene()
    outer, inner = scene.guard(0), scene.guard(1)
    scene.mark()
    outer.__enter__()
    inner.__enter__()
    TRAP.arm(scene.action(_setup(), inner))
    failinject.arm("mprotect", errno.ENOMEM, count=-1)
    with contextlib.suppress(MprotectError):
        inner.__exit__(None, None, None)
    assert failinject.failed("mprotect") >= 1
    failinject_reset()
    defuse()
    assert TRAP.fired == 1, "the sabotage never ran"
    scene.unwind("exit whose mprotect failed")


def case_isolated_entry_fails_half_way() -> None:
    """isolated() over keys created with rights: on mprotect, each NoAccess entry narrows
    pages; the second one fails, after the first was entered: MprotectError is built while
    the group is half entered (the old core did it there, inside the entry)."""
    assert MPROTECT
    scene = Scene(base=RW)
    iso = isolated()
    TRAP.arm(scene.action(_setup(), iso))
    # twice: a narrowing that fails is retried once (then it is NoAccess already)
    failinject.arm("mprotect", errno.ENOMEM, skip=1, count=2)
    with contextlib.suppress(MprotectError):
        iso.__enter__()
        scene.left_open.append(iso)
    assert failinject.failed("mprotect") == 2
    failinject_reset()
    defuse()
    assert TRAP.fired == 1, "the sabotage never ran"
    scene.unwind("isolated() entry that failed half-way")


def case_isolated_exit_fails() -> None:
    """Leaving isolated() over keys created with rights widens their pages again; every
    mprotect fails: MprotectError is built by the exit."""
    assert MPROTECT
    scene = Scene(base=RW)
    iso = isolated()
    iso.__enter__()
    TRAP.arm(scene.action(_setup(), iso))
    failinject.arm("mprotect", errno.ENOMEM, count=-1)
    try:
        iso.__exit__(None, None, None)
    except MprotectError:
        scene.left_open.append(iso)
    assert failinject.failed("mprotect") >= 1
    failinject_reset()
    defuse()
    assert TRAP.fired == 1, "the sabotage never ran"
    scene.unwind("isolated() exit that failed")


def case_key_close_whose_untag_fails() -> None:
    """key.close() untags its regions one by one; the first untag fails, and its error is
    built (its __init__ runs) once the key is closed.  Entering a guard on the region that
    kept the tag (its association stays), or binding a region to the key, must be refused
    then; the close reports the failure."""
    assert MPROTECT
    key = PkeyGuard(NA)
    regions = [RegionGuard(64) for _ in range(3)]
    assocs = [key.associate(r) for r in regions]
    spare = RegionGuard(64)
    tried: list[str] = []

    def sabotage() -> None:
        g = assocs[-1].set_access_rights(RW)  # untagged first (from the end): it failed
        try:
            g.__enter__()
            tried.append("entered")
            g.__exit__(None, None, None)
        except GuardStateError:
            tried.append("entry refused")
        try:
            key.associate(spare)
            tried.append("bound")
        except KeyStateError:
            tried.append("bind refused")

    _patch_error_classes()
    TRAP.arm(sabotage)
    failinject.arm("mprotect", errno.ENOMEM, count=1)
    with contextlib.suppress(MprotectError):
        key.close()
    assert failinject.failed("mprotect") == 1
    failinject_reset()
    assert TRAP.fired == 1, "the sabotage never ran"
    assert tried == ["entry refused", "bind refused"], tried
    assert key.closed and key.active_guards == 0
    assert _core.thread_guards() == []
    for r in (*regions, spare):
        r.close()
