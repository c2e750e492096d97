"""Class 1: views convert every argument first, then check, then touch memory (the child
side of test_c01_view_conversions.py; the hostile objects are in :mod:`.hostile`).

``CASES`` / ``BUFFER_CASES``: case id -> a builder that sets the scene up and returns ``op``,
the access that runs the hostile conversion; :func:`case_sabotaged_conversion` runs the one
``params()["case"]`` names.  :func:`case_hunt` is the hypothesis hunt over every slot.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pkeyguard import PkeyguardError
from tests.adversarial.childlib import hunt_settings, params, raises
from tests.adversarial.children.hostile import (
    HBool,
    HBuf,
    HFloat,
    HIndex,
    HInt,
    Hostile,
    HSeq,
    Rec,
    Sabotage,
    allowed,
    fired_log,
    setup,
    teardown,
)

Op = Callable[[], object]


def _bytes_index_read_exits() -> Op:
    v = setup(64)
    return lambda: v[HIndex(["exit"], 3)]


def _bytes_index_write_enters_noaccess() -> Op:
    v = setup(64)

    def op() -> None:
        v[HIndex(["enter_na"], 3)] = 7

    return op


def _bytes_item_value_exits() -> Op:
    v = setup(64)

    def op() -> None:
        v[3] = HIndex(["exit"], 7)

    return op


def _bytes_slice_stop_read_exits() -> Op:
    v = setup(64)
    return lambda: v[0 : HIndex(["exit"], 8)]


def _bytes_slice_start_write_enters_readonly() -> Op:
    v = setup(64)

    def op() -> None:
        v[HIndex(["enter_ro"], 4) : 8] = b"abcd"

    return op


def _bytes_slice_step_read_exits_and_closes() -> Op:
    v = setup(64)
    return lambda: v[0 : 8 : HIndex(["exit", "close_region"], 1)]


def _scalar_value(value_type: Any, hostile: Hostile) -> Op:
    v = setup(value_type)

    def op() -> None:
        v.value = hostile

    return op


def _field(name: str, hostile: Hostile) -> Op:
    c = setup(Rec).contents

    def op() -> None:
        setattr(c, name, hostile)

    return op


def _struct_nested_array_index_exits() -> Op:
    arr = setup(Rec).contents.arr

    def op() -> None:
        arr[HIndex(["exit"], 2)] = 9

    return op


def _array_index_read_exits() -> Op:
    c = setup(ctypes.c_int32 * 8).contents
    return lambda: c[HIndex(["exit"], 2)]


def _array_element_write_enters_noaccess() -> Op:
    c = setup(ctypes.c_int32 * 8).contents

    def op() -> None:
        c[1] = HIndex(["enter_na"], 9)

    return op


def _array_slice_assign_len_exits() -> Op:
    c = setup(ctypes.c_int32 * 8).contents

    def op() -> None:
        c[0:3] = HSeq(["exit"], [1, 2, 3])

    return op


def _array_slice_bound_read_exits() -> Op:
    c = setup(ctypes.c_int32 * 8).contents
    return lambda: c[0 : HIndex(["exit"], 3)]


def _bytes_slice_assign_buffer_exits() -> Op:
    v = setup(64)

    def op() -> None:
        v[0:4] = HBuf(["exit"], b"abcd")

    return op


def _bytes_value_buffer_enters_readonly() -> Op:
    v = setup(4)

    def op() -> None:
        v.value = HBuf(["enter_ro"], b"abcd")

    return op


# case id -> builder (sets the scene up, returns the access that runs the hostile conversion)
CASES: dict[str, Callable[[], Op]] = {
    "bytes-index-read-exits": _bytes_index_read_exits,
    "bytes-index-write-enters-noaccess": _bytes_index_write_enters_noaccess,
    "bytes-item-value-exits": _bytes_item_value_exits,
    "bytes-slice-stop-read-exits": _bytes_slice_stop_read_exits,
    "bytes-slice-start-write-enters-readonly": _bytes_slice_start_write_enters_readonly,
    "bytes-slice-step-read-exits-and-closes": _bytes_slice_step_read_exits_and_closes,
    "c_bool-value-enters-readonly": lambda: _scalar_value(ctypes.c_bool, HBool(["enter_ro"], True)),
    "c_double-value-exits": lambda: _scalar_value(ctypes.c_double, HFloat(["exit"], 2.5)),
    "c_float-value-enters-noaccess": lambda: _scalar_value(
        ctypes.c_float, HFloat(["enter_na"], 2.5)
    ),
    "c_uint32-value-index-exits": lambda: _scalar_value(ctypes.c_uint32, HIndex(["exit"], 5)),
    "struct-int-field-exits": lambda: _field("a", HIndex(["exit"], 5)),
    "struct-bool-field-enters-noaccess": lambda: _field("flag", HBool(["enter_na"], True)),
    "struct-double-field-enters-readonly": lambda: _field("d", HFloat(["enter_ro"], 1.25)),
    "struct-nested-array-index-exits": _struct_nested_array_index_exits,
    "array-index-read-exits": _array_index_read_exits,
    "array-element-write-enters-noaccess": _array_element_write_enters_noaccess,
    "array-slice-assign-len-exits": _array_slice_assign_len_exits,
    "array-slice-bound-read-exits": _array_slice_bound_read_exits,
}

#: The cases whose hostile object is a buffer exporter (``__buffer__``: Python 3.12+).
BUFFER_CASES: dict[str, Callable[[], Op]] = {
    "bytes-slice-assign-buffer-exits": _bytes_slice_assign_buffer_exits,
    "bytes-value-buffer-enters-readonly": _bytes_value_buffer_enters_readonly,
}


def case_sabotaged_conversion() -> None:
    name = params()["case"]
    op = {**CASES, **BUFFER_CASES}[name]()
    exc = raises(PkeyguardError, op)
    print("raised", type(exc).__name__, exc, flush=True)
    assert fired_log, "the hostile conversion never ran: the attack did not happen"
    teardown()


ACTIONS = [
    "exit",
    "enter_na",
    "enter_ro",
    "enter_rw",
    "reenter",
    "close_region",
    "close_key",
    "disassociate",
    "gc",
    "raise",
]
IDX_VALID: list[object] = [0, 5, 63, -1, -64]
IDX_ODD: list[object] = [64, -65, 2**70, "x"]
BOUND_VALID: list[object] = [-100, -5, 0, 3, 10, 64, 100]
BOUND_ODD: list[object] = ["x", None, 2**70]


def slice_len(start: int, stop: int) -> int:
    return len(range(64)[start:stop])


def _set_value(value_type: Any) -> Callable[[Hostile], Op]:
    return lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(value_type))


def _set_field(name: str) -> Callable[[Hostile], Op]:
    return lambda h: (lambda c: lambda: setattr(c, name, h))(setup(Rec).contents)


def _bytes_set_start(h: Hostile) -> Op:
    v = setup(64)
    data = bytes(slice_len(h.value, 40)) if isinstance(h.value, int) else b""
    return lambda: v.__setitem__(slice(h, 40), data)


def _bytes_set_stop(h: Hostile) -> Op:
    v = setup(64)
    data = bytes(slice_len(2, h.value)) if isinstance(h.value, int) else b""
    return lambda: v.__setitem__(slice(2, h), data)


Target = tuple[type[Hostile], list[object], list[object], int, Callable[[Hostile], Op]]

# target -> (hostile class, valid values, odd values, need, build(hostile) -> op)
TARGETS: dict[str, Target] = {
    "bytes_get_index": (
        HIndex, IDX_VALID, IDX_ODD, 1,
        lambda h: (lambda v: lambda: v[h])(setup(64)),
    ),
    "bytes_set_index": (
        HIndex, IDX_VALID, IDX_ODD, 2,
        lambda h: (lambda v: lambda: v.__setitem__(h, 7))(setup(64)),
    ),
    "bytes_set_value": (
        HIndex, [0, 7, 255], [256, -1, "x"], 2,
        lambda h: (lambda v: lambda: v.__setitem__(3, h))(setup(64)),
    ),
    "bytes_get_start": (
        HIndex, BOUND_VALID, BOUND_ODD, 1,
        lambda h: (lambda v: lambda: v[h:40])(setup(64)),
    ),
    "bytes_get_stop": (
        HIndex, BOUND_VALID, BOUND_ODD, 1,
        lambda h: (lambda v: lambda: v[2:h])(setup(64)),
    ),
    "bytes_get_step": (
        HIndex, [1], [2, -1, 0, "x"], 1,
        lambda h: (lambda v: lambda: v[0:8:h])(setup(64)),
    ),
    "bytes_set_start": (HIndex, BOUND_VALID, BOUND_ODD, 2, _bytes_set_start),
    "bytes_set_stop": (HIndex, BOUND_VALID, BOUND_ODD, 2, _bytes_set_stop),
    "c_bool": (HBool, [True, False], [1, "x"], 2, _set_value(ctypes.c_bool)),
    "c_double": (HFloat, [0.0, -2.5, 1e300], ["x", 1], 2, _set_value(ctypes.c_double)),
    "c_float": (HFloat, [0.0, 2.5], ["x"], 2, _set_value(ctypes.c_float)),
    "c_int32": (HIndex, [0, -5, 2**31 - 1, -(2**31)], [2**31, "x"], 2, _set_value(ctypes.c_int32)),
    "c_uint8": (HIndex, [0, 255], [256, -1], 2, _set_value(ctypes.c_uint8)),
    "c_int64_int": (HInt, [5], ["x"], 2, _set_value(ctypes.c_int64)),
    "struct_a": (HIndex, [0, 5, -7], ["x", 2**40], 2, _set_field("a")),
    "struct_flag": (HBool, [True, False], [1], 2, _set_field("flag")),
    "struct_d": (HFloat, [1.5], ["x"], 2, _set_field("d")),
    "struct_arr_get": (
        HIndex, [0, 7, -1], [8, "x"], 1,
        lambda h: (lambda a: lambda: a[h])(setup(Rec).contents.arr),
    ),
    "struct_arr_set": (
        HIndex, [0, 7], [8], 2,
        lambda h: (lambda a: lambda: a.__setitem__(h, 3))(setup(Rec).contents.arr),
    ),
    "array_get": (
        HIndex, [0, 7, -1], [8, "x"], 1,
        lambda h: (lambda c: lambda: c[h])(setup(ctypes.c_int32 * 8).contents),
    ),
    "array_set_value": (
        HIndex, [1, -1], ["x"], 2,
        lambda h: (lambda c: lambda: c.__setitem__(2, h))(setup(ctypes.c_int32 * 8).contents),
    ),
    "array_slice_assign": (
        HSeq, [[1, 2, 3]], [[1, 2], ["x", "y", "z"]], 2,
        lambda h: (lambda c: lambda: c.__setitem__(slice(0, 3), h))(
            setup(ctypes.c_int32 * 8).contents
        ),
    ),
    "array_get_stop": (
        HIndex, [0, 3, 8, 100], ["x"], 1,
        lambda h: (lambda c: lambda: c[1:h])(setup(ctypes.c_int32 * 8).contents),
    ),
}  # fmt: skip
if sys.version_info >= (3, 12):
    TARGETS["bytes_set_slice_buffer"] = (
        HBuf, [b"abcd"], [b"abc"], 2,
        lambda h: (lambda v: lambda: v.__setitem__(slice(0, 4), h))(setup(64)),
    )  # fmt: skip
    TARGETS["bytes_value_buffer"] = (
        HBuf, [b"abcd"], [b"ab"], 2,
        lambda h: (lambda v: lambda: setattr(v, "value", h))(setup(4)),
    )  # fmt: skip

CONVERSION_ERRORS = (TypeError, ValueError, IndexError, OverflowError)

Scenario = tuple[str, list[str], object, bool, bool]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    target = draw(st.sampled_from(sorted(TARGETS)))
    _cls, valid, odd_values, _need, _build = TARGETS[target]
    actions = draw(st.lists(st.sampled_from(ACTIONS), max_size=3))
    swallow = draw(st.booleans())
    odd = bool(odd_values) and draw(st.booleans())
    value = draw(st.sampled_from(odd_values if odd else valid))
    return target, actions, value, swallow, odd


def case_hunt() -> None:
    @hunt_settings()
    @given(scenarios())
    def hunt(scenario: Scenario) -> None:
        target, actions, value, swallow, odd = scenario
        print("scenario", scenario, flush=True)
        cls, _valid, _odd_values, need, build = TARGETS[target]
        hostile = cls(actions, value, swallow)
        op = build(hostile)
        failure: str | None
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
                failure = (
                    f"the hook sabotaged the access and returned a valid value, but the "
                    f"access raised {type(exc).__name__}: {exc}, not a pkeyguard error"
                )
        except BaseException as exc:
            failure = f"unexpected {type(exc).__module__}.{type(exc).__name__}: {exc}"
        else:
            failure = (
                None
                if allowed(need)
                else "the access succeeded although the hooks left it without rights"
            )
        teardown()
        assert failure is None, failure

    hunt()
    print("hooks fired in", len(fired_log), "examples", flush=True)
    assert fired_log, "no hostile conversion ran in the whole hunt: the attack did not happen"
