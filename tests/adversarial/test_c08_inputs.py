"""Class 8: inputs are normalised once.  Sizes that are int subclasses whose ``__index__``,
``__int__``, arithmetic and comparisons lie give a region (or secret) of the true size,
reported consistently; bool sizes are refused; offsets of ``secret.write`` are normalised
the same way; non-native byte-order scalars (``__ctype_be__``) are read and written in their
own byte order.  The child programs: children/c08_inputs.py."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case

CHILD = "c08_inputs"


def test_hunt_lying_int_subclass_region_sizes() -> None:
    """Class 8 (hypothesis, in the child): RegionGuard(LyingInt(n)) where the int subclass's
    __index__, __int__, arithmetic, comparisons, __bool__ and __hash__ return random lies:
    a valid n maps a region whose size (an exact int), mapped_size, mapping and view all
    agree with n; an invalid n (<= 0, > MAX_REGION_SIZE) is refused without a mapping;
    RegionGuard(True/False) is refused."""
    child = run_case(CHILD, "case_hunt_region_sizes", params={"examples": 150}, watchdog=120)
    assert_survived(child)


def test_hunt_lying_int_subclass_secret_sizes_and_offsets() -> None:
    """Class 8 (hypothesis, in the child): Secret(LyingInt(n)) and
    secret.write(LyingInt(offset), data) with lying dunders: the secret has the true size,
    a write inside it lands at the true offset, one outside it is refused without changing
    anything; Secret(True) is refused."""
    child = run_case(
        CHILD, "case_hunt_secret_sizes_and_offsets", params={"examples": 150}, watchdog=120
    )
    assert_survived(child)


def test_hunt_non_native_byte_order_scalars() -> None:
    """Class 8 (hypothesis, in the child): regions of c_(u)int16/32/64, c_float and
    c_double in big-endian (__ctype_be__) and native (__ctype_le__) byte order: a value
    written through the view is stored in that byte order (the bytes ctypes would store),
    and a value stored by ctypes reads back through read and write views the same as
    ``T.from_address(addr).value`` (the old core reads and writes native order always)."""
    child = run_case(
        CHILD, "case_hunt_byte_order", params={"examples": 150}, timeout=120, watchdog=90
    )
    assert_survived(child)
