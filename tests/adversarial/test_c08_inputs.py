"""Class 8: inputs are normalised once.  Sizes that are int subclasses whose ``__index__``,
``__int__``, arithmetic and comparisons lie give a region (or secret) of the true size,
reported consistently; bool sizes are refused; offsets of ``secret.write`` are normalised
the same way; non-native byte-order scalars (``__ctype_be__``) are read and written in their
own byte order."""

from __future__ import annotations

from tests.adversarial.support import HYPOTHESIS, assert_survived, attack

_LIAR = """
MAX = 1 << 46


def make_liar(true_value, lies):
    ns = {}
    for name, lie in lies.items():
        ns[name] = (lambda lie: lambda self, *args: lie)(lie)
    cls = type("LyingInt", (int,), ns)
    return cls(true_value)


LIE_NAMES = ["__index__", "__int__", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
             "__rmul__", "__floordiv__", "__rfloordiv__", "__mod__", "__lt__", "__le__",
             "__gt__", "__ge__", "__eq__", "__ne__", "__bool__", "__hash__"]
LIE_VALUES = {"__bool__": [True, False], "__hash__": [0, 7],
              "__lt__": [True, False], "__le__": [True, False], "__gt__": [True, False],
              "__ge__": [True, False], "__eq__": [True, False], "__ne__": [True, False]}
NUMBER_LIES = [0, 1, 4096, 8192, 1 << 20, -1, 1 << 50]


def lies_strategy():
    return st.dictionaries(
        st.sampled_from(LIE_NAMES),
        st.integers(),
        max_size=len(LIE_NAMES),
    ).flatmap(lambda d: st.fixed_dictionaries({
        name: st.sampled_from(LIE_VALUES.get(name, NUMBER_LIES)) for name in d
    }))


def round_up(n):
    return (n + PAGE - 1) // PAGE * PAGE


VALID = [1, 7, 8, 100, 4095, 4096, 4097, 65536]
INVALID = [0, -1, -4096, MAX + 1, 1 << 60]
REFUSED = (PkeyguardError, ValueError, TypeError, OverflowError)
"""

_REGION_HUNT = """
@SETTINGS
@given(st.sampled_from(VALID + INVALID), lies_strategy())
def hunt(true_value, lies):
    print("size", true_value, lies, flush=True)
    liar = make_liar(true_value, lies)
    snap = snapshot()
    if true_value not in VALID:
        raises(REFUSED, RegionGuard, liar)
        assert_clean(snap, "refused size")
        return
    region = RegionGuard(liar)
    key = PkeyGuard()
    try:
        size = region.size
        assert type(size) is int and size == true_value, f"size {size!r} ({type(size).__name__})"
        mapped = region.mapped_size
        assert type(mapped) is int and mapped == round_up(true_value), f"mapped {mapped!r}"
        assert perms_at(region.address) != "" and perms_at(region.address + mapped - 1) != ""
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
"""


def test_hunt_lying_int_subclass_region_sizes() -> None:
    """Class 8 (hypothesis, in the child): RegionGuard(LyingInt(n)) where the int subclass's
    __index__, __int__, arithmetic, comparisons, __bool__ and __hash__ return random lies:
    a valid n maps a region whose size (an exact int), mapped_size, mapping and view all
    agree with n; an invalid n (<= 0, > MAX_REGION_SIZE) is refused without a mapping;
    RegionGuard(True/False) is refused."""
    child = attack(_LIAR + HYPOTHESIS + _REGION_HUNT, params={"examples": 150}, watchdog=120)
    assert_survived(child)


_SECRET_HUNT = """
SECRET_VALID = [1, 7, 100, 4095, 4096, 5000]


@SETTINGS
@given(st.sampled_from(SECRET_VALID + INVALID[:3]), lies_strategy(),
       st.integers(-3, 5200), lies_strategy(), st.integers(1, 9))
def hunt(true_size, size_lies, true_offset, offset_lies, n):
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
        if 0 <= true_offset and true_offset + n <= true_size:
            secret.write(offset, data)
            with secret.reveal() as buf:
                got = bytes(buf)
            expect = bytes(true_offset) + data + bytes(true_size - true_offset - n)
            assert got == expect, f"wrote at the wrong place: {got[:32]!r}..."
        else:
            raises((PkeyguardError, ValueError, IndexError, OverflowError),
                   secret.write, offset, data)
            with secret.reveal() as buf:
                assert bytes(buf) == bytes(true_size), "a refused write changed the secret"
    finally:
        secret.close()
    assert_clean(snap, "lying secret size/offset")


hunt()
raises((PkeyguardError, TypeError, ValueError), Secret, True)
"""


def test_hunt_lying_int_subclass_secret_sizes_and_offsets() -> None:
    """Class 8 (hypothesis, in the child): Secret(LyingInt(n)) and
    secret.write(LyingInt(offset), data) with lying dunders: the secret has the true size,
    a write inside it lands at the true offset, one outside it is refused without changing
    anything; Secret(True) is refused."""
    child = attack(_LIAR + HYPOTHESIS + _SECRET_HUNT, params={"examples": 150}, watchdog=120)
    assert_survived(child)


_BYTE_ORDER = """
import math, struct

TYPES = {
    "c_int16": ctypes.c_int16, "c_uint16": ctypes.c_uint16,
    "c_int32": ctypes.c_int32, "c_uint32": ctypes.c_uint32,
    "c_int64": ctypes.c_int64, "c_uint64": ctypes.c_uint64,
    "c_float": ctypes.c_float, "c_double": ctypes.c_double,
}
ORDERS = {"be": "__ctype_be__", "le": "__ctype_le__"}


def values(base):
    if base in (ctypes.c_float, ctypes.c_double):
        return st.floats(allow_nan=False, width=32 if base is ctypes.c_float else 64)
    bits = ctypes.sizeof(base) * 8
    if base(-1).value < 0:
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


@SETTINGS
@given(st.sampled_from(sorted(TYPES)), st.sampled_from(sorted(ORDERS)), st.data())
def hunt(name, order, data):
    base = TYPES[name]
    t = getattr(base, ORDERS[order])
    value = data.draw(values(base), label="value")
    other = data.draw(values(base), label="other")
    key = PkeyGuard()
    region = RegionGuard(t)
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
"""


def test_hunt_non_native_byte_order_scalars() -> None:
    """Class 8 (hypothesis, in the child): regions of c_(u)int16/32/64, c_float and
    c_double in big-endian (__ctype_be__) and native (__ctype_le__) byte order: a value
    written through the view is stored in that byte order (the bytes ctypes would store),
    and a value stored by ctypes reads back through read and write views the same as
    ``T.from_address(addr).value`` (the old core reads and writes native order always)."""
    child = attack(HYPOTHESIS + _BYTE_ORDER, params={"examples": 150}, timeout=120, watchdog=90)
    assert_survived(child)
