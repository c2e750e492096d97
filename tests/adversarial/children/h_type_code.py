"""H3: a ctypes scalar subclass whose ``_type_`` was reassigned must not get a view wider
than its value (the child program of ``test_h03_ctypes_type_code.py``)."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

from pkeyguard import (
    PkeyGuard,
    PkeyguardError,
    RegionError,
    RegionGuard,
    RegionTypeError,
    allocator,
)
from tests.adversarial.childlib import RW


def case_a_lying_type_code_cannot_make_a_view_wider_than_its_value() -> None:
    class Lying(ctypes.c_uint8):
        pass

    lying: Any = Lying
    lying._type_ = "q"
    assert ctypes.sizeof(Lying) == 1
    try:
        region = RegionGuard(Lying, allocator=allocator.Secure())
    except (RegionTypeError, RegionError):
        pass  # refused: fine
    else:
        key = PkeyGuard()
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            # -1 does not fit the 1-byte value ctypes really made: refused, fine
            with contextlib.suppress(PkeyguardError, OverflowError):
                v.value = -1
        assoc.disassociate()
        key.close()
        region.close()  # CanaryError: the view wrote past the 1-byte value
