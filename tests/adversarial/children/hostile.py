"""The hostile objects of class 1 (imported by child programs, e.g. ``c01_view_conversions``).

- :data:`ctx`: the scene of one attack (``key``, ``region``, ``assoc``, the outer ReadWrite
  guard ``g``, ``stack`` of guards in entry order, ``inner`` (guards the hooks entered, with
  their levels), ``reentered``);
- :func:`setup`: a fresh key and region, associated, with ``g`` entered; returns
  ``g.mut_ref_guard()``;
- :func:`act`: one sabotage: ``exit`` (``g.__exit__``), ``enter_na`` / ``enter_ro`` /
  ``enter_rw`` (a new guard on the same key, left active), ``reenter`` (``g`` again, once it
  exited: a new activation), ``close_region``, ``close_key``, ``disassociate``, ``gc``,
  ``raise`` (:class:`Sabotage`);
- hostile classes whose conversion dunders run their actions first, then return ``value``:
  :class:`HIndex` (``__index__``), :class:`HInt` (``__int__`` only), :class:`HBool`
  (``__bool__``), :class:`HFloat` (``__float__``), :class:`HSeq` (``__len__``,
  ``__getitem__``, ``__iter__``) and :class:`HBuf` (``__buffer__``, used on 3.12+);
- :func:`allowed`: whether this thread may still access the region through the view
  (need 1: read, 2: write) after what the hooks did;
- :func:`teardown`: leave every guard, close region and key, check no guard is left;
- :data:`fired_log`: every hostile object whose hook ran (a test asserts its attack happened).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterable, Iterator
from typing import Any

from pkeyguard import PkeyGuard, PkeyguardError, RegionGuard, _core
from pkeyguard.pkey import AccessGuard, AssociatedRegion
from tests.adversarial.childlib import LEVEL, NA, RO, RW, exit_all


class Sabotage(Exception):
    pass


class Ctx:
    key: PkeyGuard
    region: RegionGuard[Any]
    assoc: AssociatedRegion[Any]
    g: AccessGuard[Any]
    stack: list[AccessGuard[Any]]
    inner: list[tuple[AccessGuard[Any], int]]
    reentered: bool


ctx = Ctx()


def setup(value_type: Any) -> Any:
    ctx.key = PkeyGuard()
    ctx.region = RegionGuard(value_type)
    ctx.assoc = ctx.key.associate(ctx.region)
    ctx.g = ctx.assoc.set_access_rights(RW)
    ctx.g.__enter__()
    ctx.stack = [ctx.g]
    ctx.inner = []
    ctx.reentered = False
    return ctx.g.mut_ref_guard()


def act(name: str) -> None:
    if name == "exit":
        ctx.g.__exit__(None, None, None)
    elif name in ("enter_na", "enter_ro", "enter_rw"):
        rights = {"enter_na": NA, "enter_ro": RO, "enter_rw": RW}[name]
        h = ctx.assoc.set_access_rights(rights)
        h.__enter__()
        ctx.stack.append(h)
        ctx.inner.append((h, LEVEL[rights]))
    elif name == "reenter":
        if not ctx.g.active:
            ctx.g.__enter__()
            ctx.stack.append(ctx.g)
            ctx.reentered = True
    elif name == "close_region":
        ctx.region.close()
    elif name == "close_key":
        ctx.key.close()
    elif name == "disassociate":
        ctx.assoc.disassociate()
    elif name == "gc":
        gc.collect()
    elif name == "raise":
        raise Sabotage("raised by a hostile conversion")
    else:
        raise AssertionError(name)


fired_log: list[Hostile] = []  # every hostile object whose hook ran (the attack happened)


class Hostile:
    def __init__(self, actions: Iterable[str], value: Any, swallow: bool = False) -> None:
        self.actions = list(actions)
        self.value = value
        self.swallow = swallow
        self.fired = False

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        fired_log.append(self)
        for name in self.actions:
            try:
                act(name)
            except PkeyguardError:
                if not self.swallow:
                    raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.actions!r}, {self.value!r}, swallow={self.swallow})"


class HIndex(Hostile):
    def __index__(self) -> Any:
        self.fire()
        return self.value


class HInt(Hostile):
    def __int__(self) -> Any:
        self.fire()
        return self.value


class HBool(Hostile):
    def __bool__(self) -> Any:
        self.fire()
        return self.value


class HFloat(Hostile):
    def __float__(self) -> Any:
        self.fire()
        return self.value


class HSeq(Hostile):
    def __len__(self) -> int:
        self.fire()
        return len(self.value)

    def __getitem__(self, index: Any) -> Any:
        self.fire()
        return self.value[index]

    def __iter__(self) -> Iterator[Any]:
        self.fire()
        return iter(self.value)


class HBuf(Hostile):
    """Exports its value's buffer (``__buffer__``: only Python 3.12+ asks for it)."""

    def __buffer__(self, flags: int) -> memoryview:
        self.fire()
        return memoryview(self.value)


def allowed(need: int) -> bool:
    # The view's activation must be live; this thread's rights to the key are then those
    # of its innermost active guard on it (g itself, ReadWrite, when the hooks left none).
    if ctx.region.closed or not ctx.g.active or ctx.reentered:
        return False
    active = [level for h, level in ctx.inner if h.active]
    return not active or active[-1] >= need


def teardown() -> None:
    exit_all(ctx.stack)
    for close in (ctx.region.close, ctx.key.close):
        with contextlib.suppress(PkeyguardError):
            close()
    left = _core.thread_guards()
    assert left == [], f"guards left active after the attack: {left!r}"


class Rec(ctypes.Structure):
    _fields_ = [
        ("a", ctypes.c_int32),
        ("flag", ctypes.c_bool),
        ("d", ctypes.c_double),
        ("arr", ctypes.c_uint8 * 8),
    ]
