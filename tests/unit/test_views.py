from __future__ import annotations

import ctypes
import hashlib
import threading
from collections.abc import Callable
from typing import Any, Final

import pytest

from pkeyguard import (
    AccessError,
    AccessPermissions,
    BytesRef,
    CompositeRef,
    MutBytesRef,
    MutScalarRef,
    PkeyGuard,
    PkeyPermissions,
    RegionGuard,
    RegionTypeError,
    ScalarRef,
    ViewError,
)
from tests.support import perms_at

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess


class Inner(ctypes.Structure):
    _fields_ = (("a", ctypes.c_uint16), ("b", ctypes.c_uint8 * 3))


class Outer(ctypes.Structure):
    _fields_ = (
        ("n", ctypes.c_int64),
        ("f", ctypes.c_double),
        ("inner", Inner),
        ("name", ctypes.c_char * 8),
    )


SCALARS: list[tuple[Any, object]] = [
    (ctypes.c_int8, -5),
    (ctypes.c_uint8, 250),
    (ctypes.c_int16, -30000),
    (ctypes.c_uint16, 65535),
    (ctypes.c_int32, -(2**31)),
    (ctypes.c_uint32, 2**32 - 1),
    (ctypes.c_int64, -(2**63)),
    (ctypes.c_uint64, 2**64 - 1),
    (ctypes.c_long, 12),
    (ctypes.c_ulong, 13),
    (ctypes.c_double, 2.5),
    (ctypes.c_float, 0.5),
    (ctypes.c_bool, True),
    (ctypes.c_char, b"x"),
]


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize(("ctype", "value"), SCALARS)
def test_scalar_round_trip(ctype: Any, value: Any) -> None:
    with RegionGuard(ctype) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            assert isinstance(v, MutScalarRef)
            v.value = value
            assert v.value == value
        with assoc.set_access_rights(RO) as r:
            ref = r.ref_guard()
            assert isinstance(ref, ScalarRef) and not ref.writable
            assert ref.value == value
        # the C view and ctypes agree on the memory layout
        with assoc.set_access_rights(RO):
            assert ctype.from_address(region.address).value == value


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize(
    ("ctype", "bad", "exc"),
    [
        (ctypes.c_uint8, 256, OverflowError),
        (ctypes.c_int8, -129, OverflowError),
        (ctypes.c_uint32, -1, OverflowError),
        (ctypes.c_uint64, 2**64, OverflowError),
        (ctypes.c_int32, "1", TypeError),
        (ctypes.c_double, "x", TypeError),
        (ctypes.c_char, b"ab", TypeError),
    ],
)
def test_scalar_rejects_bad_values(ctype: Any, bad: Any, exc: type[Exception]) -> None:
    with RegionGuard(ctype) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            before = v.value
            with pytest.raises(exc):
                v.value = bad
            assert v.value == before


@pytest.mark.usefixtures("no_leaks")
def test_views_expire_with_their_guard() -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        g = assoc.set_access_rights(RW)
        with g:
            v = g.mut_ref_guard()
            v.value = 1
            assert v.valid
        assert not v.valid and "expired" in repr(v)
        with pytest.raises(ViewError, match="after its guard exited"):
            _ = v.value
        with pytest.raises(ViewError):
            v.value = 2
        # re-entering the same guard object does not revive an old view
        with g:
            with pytest.raises(ViewError):
                _ = v.value
            assert g.mut_ref_guard().value == 1


@pytest.mark.usefixtures("no_leaks")
def test_write_view_refused_under_read_only_and_no_access() -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RO) as r:
            with pytest.raises(AccessError, match="ReadWrite"):
                r.mut_ref_guard()  # type: ignore[attr-defined]
            ref = r.ref_guard()
            with pytest.raises(AccessError, match="read-only"):
                ref.value = 3  # type: ignore[misc]
        with assoc.set_access_rights(NA) as n:
            with pytest.raises(AccessError, match="ReadOnly or ReadWrite"):
                n.ref_guard()  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            _ = assoc.set_access_rights(RO).no_such_thing  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_leaks")
def test_outer_view_respects_inner_guard() -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            with assoc.set_access_rights(RO):
                assert v.value == 0
                with pytest.raises(AccessError, match="restricts"):
                    v.value = 1
                with assoc.set_access_rights(NA), pytest.raises(AccessError):
                    _ = v.value
            v.value = 2
            assert v.value == 2


@pytest.mark.usefixtures("no_leaks")
def test_view_refused_when_page_rights_forbid() -> None:
    with RegionGuard(8, AccessPermissions.ReadOnly) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            assert g.ref_guard()[0] == 0
            with pytest.raises(AccessError, match="page rights"):
                g.mut_ref_guard()
    with RegionGuard(8, AccessPermissions.NoAccess) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g, pytest.raises(AccessError):
            g.ref_guard()


@pytest.mark.usefixtures("no_leaks")
def test_view_from_another_thread_is_refused() -> None:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            errors: list[BaseException] = []

            def touch() -> None:
                try:
                    _ = v.value
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=touch)
            t.start()
            t.join()
            assert len(errors) == 1 and isinstance(errors[0], ViewError)
            assert "another thread" in str(errors[0])


@pytest.mark.usefixtures("no_leaks")
def test_bytes_view() -> None:
    with RegionGuard(100) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            m = g.mut_ref_guard()
            assert isinstance(m, MutBytesRef) and len(m) == 100
            m[0:5] = b"hello"
            m[99] = 0xFF
            m[-2] = 1
            assert m[0:5] == b"hello" and m[99] == 255 and m[98] == 1
            assert bytes(m)[:5] == b"hello"
            with memoryview(m) as mv:
                assert mv.readonly is False and mv.nbytes == 100
                mv[5:6] = b"!"
            assert m.tobytes()[:6] == b"hello!"
            digest = hashlib.sha256(m).hexdigest()
            with pytest.raises(ValueError):
                m[0:5] = b"abc"
            with pytest.raises(IndexError):
                m[100] = 1
            with pytest.raises(OverflowError):
                m[0] = 256
            with pytest.raises(ValueError):
                m[::2]
            with pytest.raises(TypeError):
                m["a"]  # type: ignore[index]
            m.value = bytes(range(100))
            assert m.value == bytes(range(100))
        with assoc.set_access_rights(RO) as r:
            ref = r.ref_guard()
            assert isinstance(ref, BytesRef) and not isinstance(ref, MutBytesRef)
            with memoryview(ref) as mv:
                assert mv.readonly
            with pytest.raises((TypeError, BufferError)):
                ctypes.c_char.from_buffer(ref)  # writable export refused
            assert hashlib.sha256(ref).hexdigest() != digest  # content changed since


@pytest.mark.usefixtures("no_leaks")
def test_buffer_export_outliving_guard_is_reported() -> None:
    with RegionGuard(64) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        g = assoc.set_access_rights(RW)
        g.__enter__()
        leaked = memoryview(g.mut_ref_guard())
        with pytest.raises(ViewError, match="outlived"):
            g.__exit__(None, None, None)
        # rights were restored anyway: security wins over convenience
        assert not g.active and perms_at(region.address) == "---p"
        leaked.release()
        assert g.exports == 0


@pytest.mark.usefixtures("no_leaks")
def test_composite_view() -> None:
    with RegionGuard(Outer) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            view = g.mut_ref_guard()
            c = view.contents
            c.n = -7
            c.f = 1.25
            c.inner.a = 513
            c.inner.b[1] = 9
            c.name = b"abc"
            got = (c.n, c.f, c.inner.a, list(c.inner.b), c.name)
            assert got == (-7, 1.25, 513, [0, 9, 0], b"abc")
            kept_inner = c.inner
            kept_array = c.inner.b
        stale_reads: list[Callable[[], object]] = [
            lambda: c.n,
            lambda: kept_inner.a,
            lambda: kept_array[1],
        ]
        for stale in stale_reads:
            with pytest.raises(ViewError):
                stale()
        with pytest.raises(ViewError):
            c.n = 1
        with assoc.set_access_rights(RO) as r:
            ref = r.ref_guard()
            assert isinstance(ref, CompositeRef)
            assert ref.contents.inner.b[1] == 9
            with pytest.raises(AccessError, match="read-only"):
                ref.contents.n = 5
            with pytest.raises(AccessError):
                ref.contents.inner.b[0] = 1
            assert ref.contents.n == -7


@pytest.mark.usefixtures("no_leaks")
def test_composite_view_refuses_byte_level_access() -> None:
    # The byte-level base would make view[0] the first byte of a uint32 array: refused.
    with RegionGuard(ctypes.c_uint32 * 4) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            view: Any = g.mut_ref_guard()
            view.contents[0] = 0x01020304
            with pytest.raises(TypeError, match=r"view\.contents\[i\]"):
                view[0]
            with pytest.raises(TypeError, match="composite"):
                view[0] = 9
            with pytest.raises(AttributeError, match="composite"):
                _ = view.value
            with pytest.raises(AttributeError, match="composite"):
                view.value = b"\0" * 16
            assert view.contents[0] == 0x01020304 and view.tobytes()[:4] == b"\x04\x03\x02\x01"


@pytest.mark.usefixtures("no_leaks")
def test_array_region() -> None:
    with RegionGuard(ctypes.c_uint32 * 4) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            arr = g.mut_ref_guard().contents
            arr[3] = 42
            assert len(arr) == 4 and arr[3] == 42 and list(arr[:]) == [0, 0, 0, 42]


class Flags(ctypes.Structure):
    _fields_ = (("a", ctypes.c_uint32, 3), ("b", ctypes.c_uint32, 11), ("c", ctypes.c_uint16))


class Pair(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int16), ("y", ctypes.c_uint8 * 3))


class Either(ctypes.Union):
    _fields_ = (("word", ctypes.c_uint32), ("half", ctypes.c_uint16 * 2), ("pair", Pair))


class Record(ctypes.Structure):
    _fields_ = (
        ("flags", Flags),
        ("pairs", Pair * 4),
        ("either", Either),
        ("text", ctypes.c_char * 6),
        ("wide", ctypes.c_wchar * 3),
        ("grid", (ctypes.c_int8 * 3) * 2),
    )


@pytest.mark.usefixtures("no_leaks")
def test_composite_access_matches_ctypes_on_a_copy() -> None:
    # The same writes through the view and on a plain ctypes object: every read agrees, and
    # the region holds exactly the plain object's bytes.
    plain = Record()
    with RegionGuard(Record) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            view = g.mut_ref_guard()
            c: Any = view.contents
            for target in (c, plain):
                target.flags.a = 5
                target.flags.b = 1029
                target.flags.c = 65535
                target.flags.a = 6  # a bitfield write keeps its neighbours
                target.pairs[1].x = -3
                target.pairs[2].y[1] = 200
                target.pairs[3] = Pair(7, (ctypes.c_uint8 * 3)(1, 2, 3))
                target.pairs[0:4:3] = [Pair(1), Pair(2)]
                target.either.half[1] = 0xBEEF
                target.text = b"hi"
                target.wide = "ab"
                target.grid[1][2] = -1
                target.grid[0][::2] = [4, 5]
            assert view.tobytes() == bytes(plain)
            assert (c.flags.a, c.flags.b, c.flags.c) == (6, 1029, 65535)
            assert c.either.word == plain.either.word and c.text == b"hi" and c.wide == "ab"
            assert c.grid[0][:] == plain.grid[0][:] and c.grid[0][::-1] == plain.grid[0][::-1]
            assert [p.x for p in c.pairs[::-1]] == [p.x for p in plain.pairs[::-1]]
            assert bytes(c.pairs[3].y[:]) == bytes(plain.pairs[3].y[:])
            assert dir(c)[:3] == ["either", "flags", "grid"]
            with pytest.raises(AttributeError, match="no field"):
                _ = c.nonexistent


@pytest.mark.usefixtures("no_leaks")
def test_nothing_from_a_composite_view_outlives_its_guard() -> None:
    with RegionGuard(Pair * 3) as region, PkeyGuard() as key:
        with key.associate(region).set_access_rights(RW) as g:
            arr: Any = g.mut_ref_guard().contents
            items = arr[0:3]  # proxies, not ctypes objects over the region
            assert not any(isinstance(i, ctypes.Structure) for i in items)
            items[1].x = 11
            assert arr[1].x == 11
            row = arr[2].y
        stale: list[Callable[[], object]] = [
            lambda: items[0].x,
            lambda: row[0],
            lambda: arr[1:1],  # even an empty slice
            lambda: arr.__setitem__(slice(2, 2), []),
            lambda: arr.__setitem__(slice(2, 0, 1), []),
        ]
        for use in stale:
            with pytest.raises(ViewError):
                use()


@pytest.mark.parametrize(
    "field",
    [
        ctypes.c_char_p,
        ctypes.c_wchar_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.py_object,
    ],
)
def test_types_holding_pointers_are_refused(field: Any) -> None:
    class Holder(ctypes.Structure):
        _fields_ = (("n", ctypes.c_int), ("p", field))

    class Outer(ctypes.Structure):
        _fields_ = (("inner", Holder * 2),)

    for value_type in (Holder, Outer, Holder * 2):
        with pytest.raises(RegionTypeError, match="pointer"):
            RegionGuard(value_type)


@pytest.mark.usefixtures("no_leaks")
def test_byte_swapped_scalars_keep_their_byte_order() -> None:
    cases: list[tuple[Any, Any]] = [
        (getattr(ctypes.c_uint32, "__ctype_be__"), 0x01020304),  # noqa: B009
        (getattr(ctypes.c_int16, "__ctype_be__"), -2),  # noqa: B009
        (getattr(ctypes.c_double, "__ctype_be__"), 2.5),  # noqa: B009
    ]
    for ctype, value in cases:
        with RegionGuard(ctype) as region, PkeyGuard() as key:
            with key.associate(region).set_access_rights(RW) as g:
                view: Any = g.mut_ref_guard()
                view.value = value
                assert ctype.from_address(region.address).value == value
                raw = ctypes.string_at(region.address, ctypes.sizeof(ctype))
                assert raw == bytes(ctype(value))
                assert g.ref_guard().value == value


def test_scalar_value_by_any_spelling_takes_the_same_checks() -> None:
    # v.value has a fast path in the type's getattro/setattro; getattr() with a name built
    # at run time (not the interned "value"), and every other attribute, take the generic
    # path.  Both must read, write and refuse alike.
    with RegionGuard(ctypes.c_uint16) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        name = "".join(["val", "ue"])
        with assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            v.value = 513
            assert getattr(v, name) == 513
            setattr(v, name, 7)
            assert v.value == 7 and v.writable and v.valid
            with pytest.raises(OverflowError):
                v.value = 1 << 16
            with pytest.raises(AttributeError, match="cannot delete"):
                del v.value  # pyright: ignore[reportAttributeAccessIssue]
            with pytest.raises(AttributeError):
                v.other = 1  # type: ignore[attr-defined]
            with pytest.raises(AttributeError):
                _ = v.other  # type: ignore[attr-defined]
        with assoc.set_access_rights(RO) as g:
            r = g.ref_guard()
            with pytest.raises(AccessError, match="read-only"):
                setattr(r, name, 1)
            with pytest.raises(AccessError, match="read-only"):
                r.value = 1  # type: ignore[misc]
        for spelling in ("value", name):
            with pytest.raises(ViewError, match="after its guard exited"):
                getattr(v, spelling)
            with pytest.raises(ViewError, match="after its guard exited"):
                setattr(v, spelling, 1)
    with RegionGuard(4) as byte_region, PkeyGuard() as key:
        byte_assoc = key.associate(byte_region)
        with byte_assoc.set_access_rights(RW) as bg:
            b = bg.mut_ref_guard()
            b.value = b"abcd"
            assert b.value == getattr(b, name) == b"abcd"
