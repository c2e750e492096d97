"""Class 2: composite views hand out checked proxies, never raw ctypes objects over region
memory (the child side of test_c02_composite_views.py)."""

from __future__ import annotations

import ctypes
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pkeyguard import (
    PkeyGuard,
    PkeyguardError,
    RegionGuard,
    RegionTypeError,
    ViewError,
    _core,
    allocator,
)
from tests.adversarial.childlib import (
    RO,
    RW,
    assert_clean,
    hunt_settings,
    params,
    raises,
    snapshot,
)

RAW = (
    ctypes._SimpleCData,  # pyright: ignore[reportPrivateUsage]
    ctypes.Structure,
    ctypes.Union,
    ctypes.Array,
    ctypes._Pointer,  # pyright: ignore[reportPrivateUsage]
)


class Pt(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32)]


class Inner(ctypes.Structure):
    _fields_ = [("p", Pt), ("pts", Pt * 3), ("raw", ctypes.c_uint8 * 4)]


class Outer(ctypes.Structure):
    _fields_ = [
        ("a", ctypes.c_int64),
        ("inner", Inner),
        ("inners", Inner * 2),
        ("flag", ctypes.c_bool),
        ("name", ctypes.c_char * 8),
        ("grid", (ctypes.c_int16 * 3) * 2),
    ]


class U(ctypes.Union):
    _fields_ = [("i", ctypes.c_uint32), ("pt", Pt), ("b", ctypes.c_uint8 * 8)]


def is_struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union))


def is_array(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, ctypes.Array)


def composite(t: Any) -> bool:
    return is_struct(t) or (is_array(t) and t._type_ not in (ctypes.c_char, ctypes.c_wchar))


def assert_not_raw(obj: object, path: str) -> None:
    assert not isinstance(obj, RAW), (
        f"{path} gave a raw ctypes object over region memory: {type(obj).__name__}"
    )
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
            assert_not_raw(item, f"{path}[{i}]")


def touch_after_exit(obj: Any, t: Any, path: str) -> None:
    # Every access through something a view gave out must raise ViewError now.
    if is_struct(t):
        name, ft = t._fields_[0][:2]
        raises(ViewError, getattr, obj, name)
        if not composite(ft):
            raises(ViewError, setattr, obj, name, 1)
    elif is_array(t):
        raises(ViewError, obj.__getitem__, 0)
        raises(ViewError, obj.__getitem__, slice(0, 1))
        if not composite(t._type_) and t._type_ is not ctypes.c_char:
            raises(ViewError, obj.__setitem__, 0, 1)
    try:
        n = len(obj)
    except PkeyguardError:
        pass
    except TypeError:
        assert is_struct(t), f"len() of {path} raised TypeError"
    else:
        assert n == t._length_, f"len() of {path} after exit is {n}"


def case_slices() -> None:
    key = PkeyGuard()
    region: RegionGuard[Any] = RegionGuard(Pt * 4)
    outer: RegionGuard[Any] = RegionGuard(Outer)
    grid: RegionGuard[Any] = RegionGuard((Pt * 2) * 3)
    assocs = [key.associate(r) for r in (region, outer, grid)]
    kept: list[tuple[Any, Any, str]] = []
    with assocs[0].set_access_rights(RW) as g:
        c = g.mut_ref_guard().contents
        for i in range(4):
            c[i].x = 10 + i
            c[i].y = 20 + i
        for s in (slice(0, 2), slice(None, None, 2), slice(-2, None), slice(None, None, -1)):
            try:
                items = c[s]
            except (TypeError, ValueError):
                # A proxy may refuse non-unit steps (byte views do); it must not leak.
                assert s.step is not None, f"contents[{s}] refused"
                continue
            assert_not_raw(items, f"contents[{s}]")
            expect = [10 + i for i in range(4)][s]
            assert [p.x for p in items] == expect, [p.x for p in items]
            kept.extend((p, Pt, f"contents[{s}] item") for p in items)
        try:
            items = list(c)
        except TypeError:
            items = []  # iteration is not promised; when offered it must not leak
        assert_not_raw(items, "list(contents)")
        kept.extend((p, Pt, "list(contents) item") for p in items)
    with assocs[1].set_access_rights(RW) as g:
        c = g.mut_ref_guard().contents
        pts = c.inners[0:2][1].pts[0:2]
        assert_not_raw(pts, "contents.inners[0:2][1].pts[0:2]")
        kept.extend((p, Pt, "nested slice item") for p in pts)
        rows = c.grid[:]
        assert_not_raw(rows, "contents.grid[:]")
        kept.extend((r, ctypes.c_int16 * 3, "grid row") for r in rows)
    with assocs[2].set_access_rights(RO) as g:
        c = g.ref_guard().contents
        rows = c[0:3]
        assert_not_raw(rows, "(Pt * 2) * 3 contents[0:3]")
        kept.extend((r, Pt * 2, "row") for r in rows)
        kept.extend((p, Pt, "row item") for p in rows[1][0:2])
    for obj, t, path in kept:
        touch_after_exit(obj, t, path)
    for r in (region, outer, grid):
        r.close()
    key.close()


ROOTS: dict[str, Any] = {
    "Outer": Outer,
    "U": U,
    "Pt*5": Pt * 5,
    "grid": (Pt * 2) * 3,
    "Inner": Inner,
}


def case_hunt() -> None:
    @hunt_settings()
    @given(st.data())
    def hunt(data: st.DataObject) -> None:
        root = data.draw(st.sampled_from(sorted(ROOTS)), label="root")
        writable = data.draw(st.booleans(), label="writable")
        close_first = data.draw(st.booleans(), label="close region before touching")
        t = ROOTS[root]
        key = PkeyGuard()
        region: RegionGuard[Any] = RegionGuard(t)
        assoc = key.associate(region)
        obtained: list[tuple[Any, Any, str]] = []
        guard: Any = assoc.set_access_rights(RW if writable else RO)
        with guard as g:
            view = g.mut_ref_guard() if writable else g.ref_guard()
            obj, path = view.contents, "contents"
            assert_not_raw(obj, path)
            obtained.append((obj, t, path))
            for _ in range(data.draw(st.integers(1, 4), label="steps")):
                if is_struct(t):
                    fields = [f[:2] for f in t._fields_]
                    name, ft = data.draw(st.sampled_from(fields), label="field")
                    obj, t, path = getattr(obj, name), ft, f"{path}.{name}"
                elif is_array(t) and composite(t):
                    how = data.draw(st.sampled_from(["index", "slice", "iter"]), label="how")
                    n = t._length_
                    if how == "index":
                        i = data.draw(st.integers(-n, n - 1), label="index")
                        obj, t, path = obj[i], t._type_, f"{path}[{i}]"
                    else:
                        if how == "slice":
                            s = slice(
                                data.draw(st.sampled_from([None, 0, 1, -2]), label="start"),
                                data.draw(st.sampled_from([None, 1, 3, -1]), label="stop"),
                                data.draw(st.sampled_from([None, 1, 2, -1]), label="step"),
                            )
                            path = f"{path}[{s.start}:{s.stop}:{s.step}]"
                            try:
                                items = obj[s]
                            except (TypeError, ValueError):
                                # non-unit steps may be refused (as byte views do)
                                assert s.step not in (None, 1), f"{path} refused"
                                break
                        else:
                            path = f"list({path})"
                            try:
                                items = list(obj)
                            except TypeError:
                                break  # iteration is not promised; when offered it must not leak
                        assert_not_raw(items, path)
                        if not items:
                            break
                        j = data.draw(st.integers(0, len(items) - 1), label="item")
                        obj, t, path = items[j], t._type_, f"{path}[{j}]"
                else:
                    break
                if writable and is_struct(t) and not composite(t._fields_[0][1]):
                    setattr(obj, t._fields_[0][0], 1)
                assert_not_raw(obj, path)
                if composite(t):
                    obtained.append((obj, t, path))
        if close_first:
            assoc.disassociate()
            region.close()
        for obj, t, path in obtained:
            touch_after_exit(obj, t, path)
        if not region.closed:
            region.close()
        key.close()
        assert _core.thread_guards() == []

    hunt()


POINTER_FIELDS: dict[str, Any] = {
    "c_char_p": ctypes.c_char_p,
    "c_wchar_p": ctypes.c_wchar_p,
    "c_void_p": ctypes.c_void_p,
    "POINTER(c_int)": ctypes.POINTER(ctypes.c_int),
    "py_object": ctypes.py_object,
    "CFUNCTYPE": ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int),
}


def _struct_field(ptr: Any) -> type[ctypes.Structure]:
    class T(ctypes.Structure):
        _fields_ = [("n", ctypes.c_uint32), ("p", ptr)]

    return T


def _union_field(ptr: Any) -> type[ctypes.Union]:
    class T(ctypes.Union):
        _fields_ = [("n", ctypes.c_uint64), ("p", ptr)]

    return T


def _nested_struct(ptr: Any) -> type[ctypes.Structure]:
    class In(ctypes.Structure):
        _fields_ = [("p", ptr)]

    class T(ctypes.Structure):
        _fields_ = [("n", ctypes.c_uint32), ("inner", In)]

    return T


def _array_field(ptr: Any) -> type[ctypes.Structure]:
    class T(ctypes.Structure):
        _fields_ = [("n", ctypes.c_uint32), ("ps", ptr * 2)]

    return T


LAYOUTS: dict[str, Any] = {
    "struct-field": _struct_field,
    "union-field": _union_field,
    "nested-struct": _nested_struct,
    "array-field": _array_field,
}


def case_pointer_structure_refused() -> None:
    p = params()
    t = LAYOUTS[p["layout"]](POINTER_FIELDS[p["pointer"]])
    snap = snapshot()
    raises(RegionTypeError, RegionGuard, t)
    raises(RegionTypeError, RegionGuard, t, allocator=allocator.Secure(lock=False))
    assert_clean(snap, "refused pointer structure")
