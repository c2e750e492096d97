"""Class 4: buffer exports honour the requested access and the thread's current rights (the
child side of test_c04_buffer_exports.py)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pkeyguard import GuardStateError, PkeyGuard, PkeyguardError, RegionGuard, _core, isolated
from tests.adversarial.childlib import (
    LEVEL,
    NA,
    RO,
    RW,
    exit_all,
    hunt_settings,
    params,
    raises,
)

REFUSED = (PkeyguardError, BufferError, TypeError)


def pack_into(v: Any) -> None:
    struct.pack_into("<I", v, 0, 0xDEADBEEF)


def memoryview_write(v: Any) -> None:
    with memoryview(v) as m:
        m[0] = 1


def from_buffer(v: Any) -> None:
    ctypes.c_uint32.from_buffer(v).value = 1


def slice_write(v: Any) -> None:
    v[0:4] = b"abcd"


class Scene:
    """A 64-byte region on a key, and a 64-byte file to read into it."""

    def __init__(self) -> None:
        self.fd, self.path = tempfile.mkstemp()
        os.write(self.fd, b"z" * 64)
        self.key = PkeyGuard()
        self.region: RegionGuard[Any] = RegionGuard(64)
        self.assoc = self.key.associate(self.region)
        self.writes: dict[str, Callable[[Any], None]] = {
            f.__name__: f
            for f in (
                pack_into,
                self.readinto,
                self.readv,
                memoryview_write,
                from_buffer,
                slice_write,
            )
        }

    def readinto(self, v: Any) -> None:
        with open(self.path, "rb", buffering=0) as f:
            f.readinto(v)

    def readv(self, v: Any) -> None:
        os.lseek(self.fd, 0, 0)
        os.readv(self.fd, [v])

    def close(self) -> None:
        self.region.close()
        self.key.close()


def case_writable_export_refused_under_inner_readonly_guard() -> None:
    s = Scene()
    g: Any = s.assoc.set_access_rights(RW)
    g.__enter__()
    v = g.mut_ref_guard()
    v[0:4] = b"keep"
    inner = s.assoc.set_access_rights(RO)
    inner.__enter__()
    exc = raises(REFUSED, s.writes[params()["op"]], v)
    print("refused with", type(exc).__name__, exc, flush=True)
    assert bytes(v[0:4]) == b"keep"  # reading is still allowed, nothing was written
    assert hashlib.sha256(v).digest() == hashlib.sha256(bytes(v)).digest()
    inner.__exit__(None, None, None)
    v[0:4] = b"done"  # the ReadWrite guard rules again
    assert g.__exit__(None, None, None) in (None, False)
    s.close()


def case_every_export_refused_under_inner_noaccess_guard() -> None:
    s = Scene()
    g: Any = s.assoc.set_access_rights(RW)
    g.__enter__()
    v = g.mut_ref_guard()
    inner = s.assoc.set_access_rights(NA)
    inner.__enter__()
    for _name, write in sorted(s.writes.items()):
        raises(REFUSED, write, v)
    raises(PkeyguardError, bytes, v)
    raises(PkeyguardError, hashlib.sha256, v)
    raises(PkeyguardError, lambda: v[0])
    raises(PkeyguardError, v.tobytes)
    inner.__exit__(None, None, None)
    g.__exit__(None, None, None)
    s.close()


def case_restrictive_guard_refused_while_memoryview_held() -> None:
    s = Scene()
    outer_rights, inner_kind = params()["outer"], params()["inner"]
    g: Any = s.assoc.set_access_rights({"RW": RW, "RO": RO}[outer_rights])
    g.__enter__()
    v = g.mut_ref_guard() if outer_rights == "RW" else g.ref_guard()
    m = memoryview(v)
    exc: BaseException
    if inner_kind == "isolated":
        cm = isolated()
        exc = raises(PkeyguardError, cm.__enter__)
    else:
        inner = s.assoc.set_access_rights({"RO": RO, "NA": NA}[inner_kind])
        exc = raises(GuardStateError, inner.__enter__)
    print("refused with", type(exc).__name__, exc, flush=True)
    left = _core.thread_guards()
    assert len(left) == 1, f"guards on this thread after the refusal: {left!r}"
    if outer_rights == "RW":
        m[0] = 0x5A  # the memoryview still works with the old rights
    assert m[0] == (0x5A if outer_rights == "RW" else 0)
    m.release()
    # Released: now the restrictive guard may be entered, and everything unwinds cleanly.
    if inner_kind == "isolated":
        with isolated():
            raises(PkeyguardError, lambda: v[0])
    else:
        inner2 = s.assoc.set_access_rights({"RO": RO, "NA": NA}[inner_kind])
        with inner2:
            if inner_kind == "NA":
                raises(PkeyguardError, lambda: v[0])
    assert g.__exit__(None, None, None) in (None, False)
    s.close()


def case_permissive_and_other_key_guards_allowed_while_memoryview_held() -> None:
    s = Scene()
    other_key = PkeyGuard()
    other = RegionGuard(64)
    other_assoc = other_key.associate(other)
    g: Any = s.assoc.set_access_rights(RO)
    g.__enter__()
    with memoryview(g.ref_guard()) as m:
        with s.assoc.set_access_rights(RW) as up:  # more permissive: allowed
            up.mut_ref_guard()[0] = 3
            with s.assoc.set_access_rights(RW) as same:  # same rights: allowed
                same.mut_ref_guard()[1] = 4
        with other_assoc.set_access_rights(NA):  # another key: allowed
            assert bytes(m[0:2]) == b"\x03\x04"
    g.__exit__(None, None, None)
    for r in (s.region, other):
        r.close()
    s.key.close()
    other_key.close()


def read_bytes(v: Any) -> object:
    return bytes(v)


def read_hash(v: Any) -> object:
    return hashlib.sha256(v).digest()


def read_index(v: Any) -> object:
    return v[5]


def read_tobytes(v: Any) -> object:
    return v.tobytes()


def read_memoryview(v: Any) -> object:
    with memoryview(v) as m:
        return bytes(m[0:8])


READS: list[Callable[[Any], object]] = [
    read_bytes,
    read_hash,
    read_index,
    read_tobytes,
    read_memoryview,
]


def case_hunt() -> None:
    s = Scene()
    ops = [(f, 1) for f in READS] + [(f, 2) for f in s.writes.values()]

    @hunt_settings()
    @given(st.lists(st.sampled_from(["NA", "RO", "RW"]), min_size=1, max_size=4), st.data())
    def hunt(levels: list[str], data: st.DataObject) -> None:
        rights = {"NA": NA, "RO": RO, "RW": RW}
        entered: list[Any] = []
        views: list[tuple[int, Any, bool]] = []
        try:
            for depth, name in enumerate(levels):
                g: Any = s.assoc.set_access_rights(rights[name])
                g.__enter__()
                entered.append(g)
                if name != "NA":
                    views.append((depth, g.ref_guard(), False))
                if name == "RW":
                    views.append((depth, g.mut_ref_guard(), True))
            if not views:
                return
            depth, view, writable = data.draw(st.sampled_from(views), label="view")
            op, need = data.draw(st.sampled_from(ops), label="op")
            print(
                "levels", levels, "view at", depth, "writable", writable, "op", op.__name__,
                flush=True,
            )  # fmt: skip
            # The thread's rights to the key are those of its innermost guard on it.
            allowed = (need == 1 or writable) and LEVEL[rights[levels[-1]]] >= need
            try:
                op(view)
            except REFUSED as exc:
                assert not allowed, f"{op.__name__} refused although allowed: {exc!r}"
            else:
                assert allowed, f"{op.__name__} succeeded without the rights for it"
        finally:
            exit_all(entered)
        assert _core.thread_guards() == []

    hunt()
    s.close()
