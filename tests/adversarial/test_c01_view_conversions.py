"""Class 1: views convert every argument first, then check, then touch memory.

Hostile ``__index__`` / ``__int__`` / ``__bool__`` / ``__float__`` / ``__len__`` /
``__iter__`` (and ``__buffer__`` on 3.12+) objects, used as indices, slice bounds, assigned
values and sequences, exit the guard, enter a NoAccess or ReadOnly guard on the same key,
close the region or key, or raise, in the middle of the access.  The access must then raise
a pkeyguard error; it must never fault.
"""

from __future__ import annotations

import sys

import pytest

from tests.adversarial.hostile import HOSTILE
from tests.adversarial.support import HYPOTHESIS, assert_survived, attack

# case id -> (setup and op; ``op`` is the access that runs the hostile conversion)
CASES: dict[str, str] = {
    "bytes-index-read-exits": "v = setup(64)\nop = lambda: v[HIndex(['exit'], 3)]",
    "bytes-index-write-enters-noaccess": (
        "v = setup(64)\ndef op():\n    v[HIndex(['enter_na'], 3)] = 7"
    ),
    "bytes-item-value-exits": "v = setup(64)\ndef op():\n    v[3] = HIndex(['exit'], 7)",
    "bytes-slice-stop-read-exits": "v = setup(64)\nop = lambda: v[0:HIndex(['exit'], 8)]",
    "bytes-slice-start-write-enters-readonly": (
        "v = setup(64)\ndef op():\n    v[HIndex(['enter_ro'], 4):8] = b'abcd'"
    ),
    "bytes-slice-step-read-exits-and-closes": (
        "v = setup(64)\nop = lambda: v[0:8:HIndex(['exit', 'close_region'], 1)]"
    ),
    "c_bool-value-enters-readonly": (
        "v = setup(ctypes.c_bool)\ndef op():\n    v.value = HBool(['enter_ro'], True)"
    ),
    "c_double-value-exits": (
        "v = setup(ctypes.c_double)\ndef op():\n    v.value = HFloat(['exit'], 2.5)"
    ),
    "c_float-value-enters-noaccess": (
        "v = setup(ctypes.c_float)\ndef op():\n    v.value = HFloat(['enter_na'], 2.5)"
    ),
    "c_uint32-value-index-exits": (
        "v = setup(ctypes.c_uint32)\ndef op():\n    v.value = HIndex(['exit'], 5)"
    ),
    "struct-int-field-exits": ("c = setup(Rec).contents\ndef op():\n    c.a = HIndex(['exit'], 5)"),
    "struct-bool-field-enters-noaccess": (
        "c = setup(Rec).contents\ndef op():\n    c.flag = HBool(['enter_na'], True)"
    ),
    "struct-double-field-enters-readonly": (
        "c = setup(Rec).contents\ndef op():\n    c.d = HFloat(['enter_ro'], 1.25)"
    ),
    "struct-nested-array-index-exits": (
        "arr = setup(Rec).contents.arr\ndef op():\n    arr[HIndex(['exit'], 2)] = 9"
    ),
    "array-index-read-exits": (
        "c = setup(ctypes.c_int32 * 8).contents\nop = lambda: c[HIndex(['exit'], 2)]"
    ),
    "array-element-write-enters-noaccess": (
        "c = setup(ctypes.c_int32 * 8).contents\ndef op():\n    c[1] = HIndex(['enter_na'], 9)"
    ),
    "array-slice-assign-len-exits": (
        "c = setup(ctypes.c_int32 * 8).contents\ndef op():\n    c[0:3] = HSeq(['exit'], [1, 2, 3])"
    ),
    "array-slice-bound-read-exits": (
        "c = setup(ctypes.c_int32 * 8).contents\nop = lambda: c[0:HIndex(['exit'], 3)]"
    ),
}

BUFFER_CASES: dict[str, str] = {
    "bytes-slice-assign-buffer-exits": (
        "v = setup(64)\ndef op():\n    v[0:4] = HBuf(['exit'], b'abcd')"
    ),
    "bytes-value-buffer-enters-readonly": (
        "v = setup(4)\ndef op():\n    v.value = HBuf(['enter_ro'], b'abcd')"
    ),
}

_RUN_CASE = """
exc = raises(PkeyguardError, op)
print("raised", type(exc).__name__, exc, flush=True)
assert fired_log, "the hostile conversion never ran: the attack did not happen"
teardown()
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_sabotaged_conversion_raises_instead_of_faulting(case: str) -> None:
    """Class 1: a conversion hook that exits the guard / enters a NoAccess or ReadOnly guard
    / closes the region makes the access raise a pkeyguard error (never a fault, never a
    plain TypeError from refusing to convert)."""
    assert_survived(attack(HOSTILE + CASES[case] + _RUN_CASE, timeout=60, watchdog=30))


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ needs Python 3.12")
@pytest.mark.parametrize("case", sorted(BUFFER_CASES))
def test_sabotaged_buffer_export_raises_instead_of_faulting(case: str) -> None:
    """Class 1 (3.12+): the assigned value's ``__buffer__`` exits the guard or enters a
    ReadOnly guard; the assignment raises a pkeyguard error."""
    assert_survived(attack(HOSTILE + BUFFER_CASES[case] + _RUN_CASE, timeout=60, watchdog=30))


_HUNT = """

ACTIONS = ["exit", "enter_na", "enter_ro", "enter_rw", "reenter", "close_region",
           "close_key", "disassociate", "gc", "raise"]
IDX_VALID = [0, 5, 63, -1, -64]
IDX_ODD = [64, -65, 2**70, "x"]
BOUND_VALID = [-100, -5, 0, 3, 10, 64, 100]
BOUND_ODD = ["x", None, 2**70]


def slice_len(start, stop):
    return len(range(64)[start:stop])


# target -> (hostile class, valid values, odd values, need, build(hostile) -> op)
TARGETS = {
    "bytes_get_index": ("HIndex", IDX_VALID, IDX_ODD, 1,
                        lambda h: (lambda v: lambda: v[h])(setup(64))),
    "bytes_set_index": ("HIndex", IDX_VALID, IDX_ODD, 2,
                        lambda h: (lambda v: lambda: v.__setitem__(h, 7))(setup(64))),
    "bytes_set_value": ("HIndex", [0, 7, 255], [256, -1, "x"], 2,
                        lambda h: (lambda v: lambda: v.__setitem__(3, h))(setup(64))),
    "bytes_get_start": ("HIndex", BOUND_VALID, BOUND_ODD, 1,
                        lambda h: (lambda v: lambda: v[h:40])(setup(64))),
    "bytes_get_stop": ("HIndex", BOUND_VALID, BOUND_ODD, 1,
                       lambda h: (lambda v: lambda: v[2:h])(setup(64))),
    "bytes_get_step": ("HIndex", [1], [2, -1, 0, "x"], 1,
                       lambda h: (lambda v: lambda: v[0:8:h])(setup(64))),
    "bytes_set_start": ("HIndex", BOUND_VALID, BOUND_ODD, 2,
                        lambda h: (lambda v: lambda: v.__setitem__(
                            slice(h, 40),
                            bytes(slice_len(h.value, 40)) if isinstance(h.value, int) else b""))(
                            setup(64))),
    "bytes_set_stop": ("HIndex", BOUND_VALID, BOUND_ODD, 2,
                       lambda h: (lambda v: lambda: v.__setitem__(
                           slice(2, h),
                           bytes(slice_len(2, h.value)) if isinstance(h.value, int) else b""))(
                           setup(64))),
    "c_bool": ("HBool", [True, False], [1, "x"], 2,
               lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_bool))),
    "c_double": ("HFloat", [0.0, -2.5, 1e300], ["x", 1], 2,
                 lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_double))),
    "c_float": ("HFloat", [0.0, 2.5], ["x"], 2,
                lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_float))),
    "c_int32": ("HIndex", [0, -5, 2**31 - 1, -2**31], [2**31, "x"], 2,
                lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_int32))),
    "c_uint8": ("HIndex", [0, 255], [256, -1], 2,
                lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_uint8))),
    "c_int64_int": ("HInt", [5], ["x"], 2,
                    lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(ctypes.c_int64))),
    "struct_a": ("HIndex", [0, 5, -7], ["x", 2**40], 2,
                 lambda h: (lambda c: lambda: setattr(c, "a", h))(setup(Rec).contents)),
    "struct_flag": ("HBool", [True, False], [1], 2,
                    lambda h: (lambda c: lambda: setattr(c, "flag", h))(setup(Rec).contents)),
    "struct_d": ("HFloat", [1.5], ["x"], 2,
                 lambda h: (lambda c: lambda: setattr(c, "d", h))(setup(Rec).contents)),
    "struct_arr_get": ("HIndex", [0, 7, -1], [8, "x"], 1,
                       lambda h: (lambda a: lambda: a[h])(setup(Rec).contents.arr)),
    "struct_arr_set": ("HIndex", [0, 7], [8], 2,
                       lambda h: (lambda a: lambda: a.__setitem__(h, 3))(setup(Rec).contents.arr)),
    "array_get": ("HIndex", [0, 7, -1], [8, "x"], 1,
                  lambda h: (lambda c: lambda: c[h])(setup(ctypes.c_int32 * 8).contents)),
    "array_set_value": ("HIndex", [1, -1], ["x"], 2,
                        lambda h: (lambda c: lambda: c.__setitem__(2, h))(
                            setup(ctypes.c_int32 * 8).contents)),
    "array_slice_assign": ("HSeq", [[1, 2, 3]], [[1, 2], ["x", "y", "z"]], 2,
                           lambda h: (lambda c: lambda: c.__setitem__(slice(0, 3), h))(
                               setup(ctypes.c_int32 * 8).contents)),
    "array_get_stop": ("HIndex", [0, 3, 8, 100], ["x"], 1,
                       lambda h: (lambda c: lambda: c[1:h])(setup(ctypes.c_int32 * 8).contents)),
}
if sys.version_info >= (3, 12):
    TARGETS["bytes_set_slice_buffer"] = (
        "HBuf", [b"abcd"], [b"abc"], 2,
        lambda h: (lambda v: lambda: v.__setitem__(slice(0, 4), h))(setup(64)))
    TARGETS["bytes_value_buffer"] = (
        "HBuf", [b"abcd"], [b"ab"], 2,
        lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(4)))

CONVERSION_ERRORS = (TypeError, ValueError, IndexError, OverflowError)


@st.composite
def scenarios(draw):
    target = draw(st.sampled_from(sorted(TARGETS)))
    cls, valid, odd_values, need, build = TARGETS[target]
    actions = draw(st.lists(st.sampled_from(ACTIONS), max_size=3))
    swallow = draw(st.booleans())
    odd = bool(odd_values) and draw(st.booleans())
    value = draw(st.sampled_from(odd_values if odd else valid))
    return target, actions, value, swallow, odd


@SETTINGS
@given(scenarios())
def hunt(scenario):
    target, actions, value, swallow, odd = scenario
    print("scenario", scenario, flush=True)
    cls, valid, odd_values, need, build = TARGETS[target]
    hostile = globals()[cls](actions, value, swallow)
    op = build(hostile)
    try:
        op()
    except Sabotage:
        failure = None
    except PkeyguardError:
        failure = None
    except CONVERSION_ERRORS as exc:
        failure = None
        if type(exc).__module__ != "builtins":
            failure = f"non-builtin conversion error {type(exc)!r}: {exc}"
        elif hostile.fired and not odd and not allowed(need):
            failure = (f"the hook sabotaged the access and returned a valid value, but the "
                       f"access raised {type(exc).__name__}: {exc}, not a pkeyguard error")
    except BaseException as exc:
        failure = f"unexpected {type(exc).__module__}.{type(exc).__name__}: {exc}"
    else:
        failure = None if allowed(need) else (
            "the access succeeded although the hooks left it without rights")
    teardown()
    assert failure is None, failure


hunt()
print("hooks fired in", len(fired_log), "examples", flush=True)
assert fired_log, "no hostile conversion ran in the whole hunt: the attack did not happen"
"""


def test_hunt_hostile_conversions() -> None:
    """Class 1 (hypothesis, in the child): random hostile objects in every conversion slot
    of byte, scalar and composite views, running random sabotage sequences; the access
    either succeeds while it is still allowed or raises (a pkeyguard error when the hook
    sabotaged a valid value), and never faults or leaves a guard behind."""
    child = attack(
        HOSTILE + HYPOTHESIS + _HUNT, params={"examples": 300}, timeout=150, watchdog=120
    )
    assert_survived(child)
