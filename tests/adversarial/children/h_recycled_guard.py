"""H2: a guard made from recycled memory still runs a ``__del__`` set on its class later
(the child program of ``test_h02_recycled_guard_finalizer.py``)."""

from __future__ import annotations

import ctypes

import pkeyguard
from pkeyguard import PkeyGuard, RegionGuard
from tests.adversarial.childlib import RW, params


def case_a_fresh_guard_from_recycled_memory_still_runs_the_class_finalizer() -> None:
    """``params()["how"]``: how an earlier guard was finalized, so that its memory is
    recycled (``one-shot __del__``: it removes itself; ``resurrecting __del__``: the
    resurrected guard is dropped after __del__ is gone)."""
    region = RegionGuard(ctypes.c_uint32)
    assoc = PkeyGuard().associate(region)
    cls = pkeyguard.WriteGuard
    how = params()["how"]
    if how == "one-shot __del__":

        def once(self: object) -> None:
            delattr(cls, "__del__")

        setattr(cls, "__del__", once)  # noqa: B010
        g = assoc.set_access_rights(RW)
        del g
    elif how == "resurrecting __del__":
        keep: list[object] = []
        setattr(cls, "__del__", lambda self: keep.append(self))  # noqa: B010
        g = assoc.set_access_rights(RW)
        del g
        delattr(cls, "__del__")
        keep.clear()
    else:
        raise AssertionError(how)
    seen: list[object] = []
    setattr(cls, "__del__", lambda self: seen.append(self.rights))  # noqa: B010
    fresh = assoc.set_access_rights(RW)
    del fresh
    delattr(cls, "__del__")
    assert seen == [RW], f"__del__ of a fresh guard did not run: seen={seen!r}"
