"""Class 8: inputs are normalised once (the child side of test_c08_inputs.py)."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pkeyguard import PkeyGuard, PkeyguardError, RegionGuard, Secret
from tests.adversarial.childlib import (
    PAGE,
    RO,
    RW,
    assert_clean,
    hunt_settings,
    raises,
    snapshot,
)
from tests.support import perms_at

MAX = 1 << 46


def _lie(lie: object) -> Callable[..., object]:
    return lambda self, *args: lie  # pyright: ignore[reportUnknownLambdaType]


def make_liar(true_value: int, lies: dict[str, object]) -> int:
    ns = {name: _lie(lie) for name, lie in lies.items()}
    cls = type("LyingInt", (int,), ns)
    liar = cls(true_value)
    assert isinstance(liar, int)
    return liar


LIE_NAMES = [
    "__index__", "__int__", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
    "__rmul__", "__floordiv__", "__rfloordiv__", "__mod__", "__lt__", "__le__",
    "__gt__", "__ge__", "__eq__", "__ne__", "__bool__", "__hash__",
]  # fmt: skip
LIE_VALUES: dict[str, list[object]] = {
    "__bool__": [True, False],
    "__hash__": [0, 7],
    "__lt__": [True, False],
    "__le__": [True, False],
    "__gt__": [True, False],
    "__ge__": [True, False],
    "__eq__": [True, False],
    "__ne__": [True, False],
}
NUMBER_LIES: list[object] = [0, 1, 4096, 8192, 1 << 20, -1, 1 << 50]


def lies_strategy() -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(
        st.sampled_from(LIE_NAMES),
        st.integers(),
        max_size=len(LIE_NAMES),
    ).flatmap(
        lambda d: st.fixed_dictionaries(
            {name: st.sampled_from(LIE_VALUES.get(name, NUMBER_LIES)) for name in d}
        )
    )


def round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


VALID = [1, 7, 8, 100, 4095, 4096, 4097, 65536]
INVALID = [0, -1, -4096, MAX + 1, 1 << 60]
REFUSED = (PkeyguardError, ValueError, TypeError, OverflowError)


def case_hunt_region_sizes() -> None:
    @hunt_settings()
    @given(st.sampled_from(VALID + INVALID), lies_strategy())
    def hunt(true_value: int, lies: dict[str, object]) -> None:
        print("size", true_value, lies, flush=True)
        liar = make_liar(true_value, lies)
        snap = snapshot()
        if true_value not in VALID:
            raises(REFUSED, RegionGuard, liar)
            assert_clean(snap, "refused size")
            return
        region: RegionGuard[Any] = RegionGuard(liar)
        key = PkeyGuard()
        try:
            size = region.size
            assert type(size) is int and size == true_value, (
                f"size {size!r} ({type(size).__name__})"
            )
            mapped = region.mapped_size
            assert type(mapped) is int and mapped == round_up(true_value), f"mapped {mapped!r}"
            assert perms_at(region.address) != ""
            assert perms_at(region.address + mapped - 1) != ""
            assoc = key.associate(region)
            with assoc.set_access_rights(RW) as g:
                v = g.mut_ref_guard()
                assert len(v) == true_value, len(v)
                data = bytes(i % 251 for i in range(true_value))
                v[:] = data
                assert bytes(v) == data and v.tobytes() == data
        finally:
            region.close()
            key.close()
        assert_clean(snap, "lying size")

    hunt()
    for flag in (True, False):
        raises((PkeyguardError, TypeError, ValueError), RegionGuard, flag)


SECRET_VALID = [1, 7, 100, 4095, 4096, 5000]


def case_hunt_secret_sizes_and_offsets() -> None:
    @hunt_settings()
    @given(
        st.sampled_from(SECRET_VALID + INVALID[:3]),
        lies_strategy(),
        st.integers(-3, 5200),
        lies_strategy(),
        st.integers(1, 9),
    )
    def hunt(
        true_size: int,
        size_lies: dict[str, object],
        true_offset: int,
        offset_lies: dict[str, object],
        n: int,
    ) -> None:
        print("secret", true_size, size_lies, "write", true_offset, offset_lies, n, flush=True)
        snap = snapshot()
        if true_size not in SECRET_VALID:
            raises(REFUSED, Secret, make_liar(true_size, size_lies))
            assert_clean(snap, "refused secret size")
            return
        secret = Secret(make_liar(true_size, size_lies))
        try:
            assert len(secret) == true_size, len(secret)
            data = bytes(range(1, n + 1))
            offset = make_liar(true_offset, offset_lies)
            if true_offset >= 0 and true_offset + n <= true_size:
                secret.write(offset, data)
                with secret.reveal() as buf:
                    got = bytes(buf)
                expect = bytes(true_offset) + data + bytes(true_size - true_offset - n)
                assert got == expect, f"wrote at the wrong place: {got[:32]!r}..."
            else:
                raises(
                    (PkeyguardError, ValueError, IndexError, OverflowError),
                    secret.write,
                    offset,
                    data,
                )
                with secret.reveal() as buf:
                    assert bytes(buf) == bytes(true_size), "a refused write changed the secret"
        finally:
            secret.close()
        assert_clean(snap, "lying secret size/offset")

    hunt()
    raises((PkeyguardError, TypeError, ValueError), Secret, True)


TYPES: dict[str, Any] = {
    "c_int16": ctypes.c_int16,
    "c_uint16": ctypes.c_uint16,
    "c_int32": ctypes.c_int32,
    "c_uint32": ctypes.c_uint32,
    "c_int64": ctypes.c_int64,
    "c_uint64": ctypes.c_uint64,
    "c_float": ctypes.c_float,
    "c_double": ctypes.c_double,
}
ORDERS = {"be": "__ctype_be__", "le": "__ctype_le__"}


def values(base: Any) -> st.SearchStrategy[Any]:
    if base in (ctypes.c_float, ctypes.c_double):
        return st.floats(allow_nan=False, width=32 if base is ctypes.c_float else 64)
    bits = ctypes.sizeof(base) * 8
    if base(-1).value < 0:
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


def case_hunt_byte_order() -> None:
    @hunt_settings()
    @given(st.sampled_from(sorted(TYPES)), st.sampled_from(sorted(ORDERS)), st.data())
    def hunt(name: str, order: str, data: st.DataObject) -> None:
        base = TYPES[name]
        t = getattr(base, ORDERS[order])
        value = data.draw(values(base), label="value")
        other = data.draw(values(base), label="other")
        key = PkeyGuard()
        region: RegionGuard[Any] = RegionGuard(t)
        assoc = key.associate(region)
        try:
            with assoc.set_access_rights(RW) as g:
                v = g.mut_ref_guard()
                v.value = value
                raw = ctypes.string_at(region.address, ctypes.sizeof(t))
                assert raw == bytes(t(value)), f"{name}.{ORDERS[order]}: stored {raw.hex()}"
                assert t.from_address(region.address).value == v.value
                t.from_address(region.address).value = other
                got = v.value
                want = t.from_address(region.address).value
                assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)
                with assoc.set_access_rights(RO) as r:
                    assert r.ref_guard().value == want
        finally:
            region.close()
            key.close()

    hunt()
