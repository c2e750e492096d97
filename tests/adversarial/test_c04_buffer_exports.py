"""Class 4: buffer exports honour the requested access and the thread's current rights.

A write view from an outer ReadWrite guard is asked for a writable buffer (struct.pack_into,
FileIO.readinto, os.readv, memoryview writes, ctypes from_buffer) while a ReadOnly guard on
the same key is entered inside: the request is refused (CPython's argument parsers turn a
refused writable buffer into TypeError, so TypeError counts as refused too), never a fault.
Entering a more restrictive guard on the key while a memoryview exported under a more
permissive one is held is refused with GuardStateError.
"""

from __future__ import annotations

import pytest

from tests.adversarial.support import HYPOTHESIS, assert_survived, attack

_SCENE = """
import hashlib, struct, tempfile

fd, path = tempfile.mkstemp()
os.write(fd, b"z" * 64)
key = PkeyGuard()
region = RegionGuard(64)
assoc = key.associate(region)
REFUSED = (PkeyguardError, BufferError, TypeError)


def pack_into(v):
    struct.pack_into("<I", v, 0, 0xDEADBEEF)


def readinto(v):
    with open(path, "rb", buffering=0) as f:
        f.readinto(v)


def readv(v):
    os.lseek(fd, 0, 0)
    os.readv(fd, [v])


def memoryview_write(v):
    with memoryview(v) as m:
        m[0] = 1


def from_buffer(v):
    ctypes.c_uint32.from_buffer(v).value = 1


def slice_write(v):
    v[0:4] = b"abcd"


WRITES = {f.__name__: f for f in (pack_into, readinto, readv, memoryview_write, from_buffer,
                                   slice_write)}
"""

_UNDER_READONLY = """
g = assoc.set_access_rights(RW)
g.__enter__()
v = g.mut_ref_guard()
v[0:4] = b"keep"
inner = assoc.set_access_rights(RO)
inner.__enter__()
exc = raises(REFUSED, WRITES[PARAMS["op"]], v)
print("refused with", type(exc).__name__, exc, flush=True)
assert bytes(v[0:4]) == b"keep"          # reading is still allowed, nothing was written
assert hashlib.sha256(v).digest() == hashlib.sha256(bytes(v)).digest()
inner.__exit__(None, None, None)
v[0:4] = b"done"                         # the ReadWrite guard rules again
assert g.__exit__(None, None, None) in (None, False)
region.close()
key.close()
"""


@pytest.mark.parametrize(
    "op", ["pack_into", "readinto", "readv", "memoryview_write", "from_buffer", "slice_write"]
)
def test_writable_export_refused_under_inner_readonly_guard(op: str) -> None:
    """Class 4: a write view of an outer ReadWrite guard, asked for a writable buffer while a
    ReadOnly guard on the same key is active inside, is refused (the old core checks only
    read access for every export, hands out a writable buffer, and the write faults)."""
    child = attack(_SCENE + _UNDER_READONLY, params={"op": op}, timeout=60, watchdog=30)
    assert_survived(child)


_UNDER_NOACCESS = """
g = assoc.set_access_rights(RW)
g.__enter__()
v = g.mut_ref_guard()
inner = assoc.set_access_rights(NA)
inner.__enter__()
for name, write in sorted(WRITES.items()):
    raises(REFUSED, write, v)
raises(PkeyguardError, bytes, v)
raises(PkeyguardError, hashlib.sha256, v)
raises(PkeyguardError, lambda: v[0])
raises(PkeyguardError, v.tobytes)
inner.__exit__(None, None, None)
g.__exit__(None, None, None)
region.close()
key.close()
"""


def test_every_export_refused_under_inner_noaccess_guard() -> None:
    """Class 4: under an inner NoAccess guard on the same key, every read and write export
    of the outer write view is refused (a property the old core already has)."""
    assert_survived(attack(_SCENE + _UNDER_NOACCESS, timeout=60, watchdog=30))


_HOLDING = """
outer_rights, inner_kind = PARAMS["outer"], PARAMS["inner"]
g = assoc.set_access_rights({"RW": RW, "RO": RO}[outer_rights])
g.__enter__()
v = g.mut_ref_guard() if outer_rights == "RW" else g.ref_guard()
m = memoryview(v)
if inner_kind == "isolated":
    cm = isolated()
    exc = raises(PkeyguardError, cm.__enter__)
else:
    inner = assoc.set_access_rights({"RO": RO, "NA": NA}[inner_kind])
    exc = raises(GuardStateError, inner.__enter__)
print("refused with", type(exc).__name__, exc, flush=True)
left = _core.thread_guards()
assert len(left) == 1, f"guards on this thread after the refusal: {left!r}"
if outer_rights == "RW":
    m[0] = 0x5A                           # the memoryview still works with the old rights
assert m[0] == (0x5A if outer_rights == "RW" else 0)
m.release()
# Released: now the restrictive guard may be entered, and everything unwinds cleanly.
if inner_kind == "isolated":
    with isolated():
        raises(PkeyguardError, lambda: v[0])
else:
    inner2 = assoc.set_access_rights({"RO": RO, "NA": NA}[inner_kind])
    with inner2:
        if inner_kind == "NA":
            raises(PkeyguardError, lambda: v[0])
assert g.__exit__(None, None, None) in (None, False)
region.close()
key.close()
"""


@pytest.mark.parametrize(
    ("outer", "inner"), [("RW", "RO"), ("RW", "NA"), ("RO", "NA"), ("RW", "isolated")]
)
def test_restrictive_guard_refused_while_memoryview_held(outer: str, inner: str) -> None:
    """Class 4: while this thread holds a memoryview exported under an active guard, entering
    a more restrictive guard on the same key (or isolated()) is refused with GuardStateError
    (any pkeyguard error for isolated()), the guard stack is unchanged and the memoryview
    keeps working; after release the restrictive guard can be entered."""
    child = attack(_SCENE + _HOLDING, params={"outer": outer, "inner": inner}, watchdog=30)
    assert_survived(child)


_ALLOWED = """
other_key = PkeyGuard()
other = RegionGuard(64)
other_assoc = other_key.associate(other)
g = assoc.set_access_rights(RO)
g.__enter__()
with memoryview(g.ref_guard()) as m:
    with assoc.set_access_rights(RW) as up:      # more permissive: allowed
        up.mut_ref_guard()[0] = 3
        with assoc.set_access_rights(RW) as same:  # same rights: allowed
            same.mut_ref_guard()[1] = 4
    with other_assoc.set_access_rights(NA):      # another key: allowed
        assert bytes(m[0:2]) == b"\\x03\\x04"
g.__exit__(None, None, None)
for r in (region, other):
    r.close()
key.close()
other_key.close()
"""


def test_permissive_and_other_key_guards_allowed_while_memoryview_held() -> None:
    """Class 4 (control): holding a memoryview does not block a more permissive or equal
    guard on the same key, nor any guard on another key (the old core allows these too)."""
    assert_survived(attack(_SCENE + _ALLOWED, timeout=60, watchdog=30))


_HUNT = """


def read_bytes(v):
    return bytes(v)


def read_hash(v):
    return hashlib.sha256(v).digest()


def read_index(v):
    return v[5]


def read_tobytes(v):
    return v.tobytes()


def read_memoryview(v):
    with memoryview(v) as m:
        return bytes(m[0:8])


READS = [read_bytes, read_hash, read_index, read_tobytes, read_memoryview]
OPS = [(f, 1) for f in READS] + [(f, 2) for f in WRITES.values()]


@SETTINGS
@given(st.lists(st.sampled_from(["NA", "RO", "RW"]), min_size=1, max_size=4),
       st.data())
def hunt(levels, data):
    rights = {"NA": NA, "RO": RO, "RW": RW}
    entered, views = [], []
    try:
        for depth, name in enumerate(levels):
            g = assoc.set_access_rights(rights[name])
            g.__enter__()
            entered.append(g)
            if name != "NA":
                views.append((depth, g.ref_guard(), False))
            if name == "RW":
                views.append((depth, g.mut_ref_guard(), True))
        if not views:
            return
        depth, view, writable = data.draw(st.sampled_from(views), label="view")
        op, need = data.draw(st.sampled_from(OPS), label="op")
        print("levels", levels, "view at", depth, "writable", writable, "op", op.__name__,
              flush=True)
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
region.close()
key.close()
"""


def test_hunt_exports_under_guard_stacks() -> None:
    """Class 4 (hypothesis, in the child): random stacks of guards on one key, a read or
    write export through a view of any level: it succeeds exactly when the view allows the
    access and so does the thread's innermost guard on the key, and is refused otherwise;
    never a fault."""
    child = attack(_SCENE + HYPOTHESIS + _HUNT, params={"examples": 200}, timeout=150, watchdog=120)
    assert_survived(child)
