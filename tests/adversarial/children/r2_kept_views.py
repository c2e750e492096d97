"""Issue 18, classes 1/2/3 (attack round two, F7 and F3): address ranges released while a
buffer export of their views is alive, and ranges whose ``munmap`` failed.

A memoryview (or a slice of one) that outlives its secret or region points at the released
range.  The range must never be handed back to the kernel while that export lives: the next
mapping could land there, and the stale memoryview would read another secret's bytes (inside
its ``reveal()``).  It stays reserved and closed (``---p``, no bytes) until the memoryview is
released, and is unmapped then.  A range whose ``munmap`` failed is closed, holds no bytes, and
is unmapped at a later release.
"""

from __future__ import annotations

import ctypes
import errno
import gc

from pkeyguard import (
    MprotectError,
    PkeyGuard,
    RegionGuard,
    Secret,
    StreamError,
    ViewError,
    allocator,
)
from tests import failinject
from tests.adversarial.childlib import NA, PAGE, RW, params
from tests.support import perms_at

NEW = b"NEWSECRET" + b"!" * 23


def maps_lines() -> list[str]:
    with open("/proc/self/maps") as f:
        return f.readlines()


def span_size(line: str) -> int:
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    return hi - lo


def address_of(m: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def read_by_kernel(address: int, n: int) -> bytes:
    with open("/proc/self/mem", "rb", buffering=0) as f:
        f.seek(address)
        return f.read(n)


def assert_held_and_never_reused(address: int) -> None:
    """The stale range is reserved and closed, and nothing mapped later lands in it."""
    later: list[Secret] = []
    regions: list[RegionGuard[bytes]] = []
    for _ in range(48):
        s = Secret.from_bytes(bytearray(NEW))
        # its whole span: the guard (or spacer) page on each side, one page of value
        lo = s.address
        assert not lo - PAGE <= address < lo + 2 * PAGE, (
            "a later secret was mapped where the stale memoryview points"
        )
        later.append(s)
        r = RegionGuard(32, allocator=allocator.Secure(backing=str(params()["backing"])))  # type: ignore[arg-type]
        assert not r.address - PAGE <= address < r.address + 2 * PAGE, (
            "a later region was mapped where the stale memoryview points"
        )
        regions.append(r)
    assert perms_at(address) == "---p", f"{address:#x}: {perms_at(address)!r}"
    assert read_by_kernel(address, 16) == bytes(16), "the held range kept bytes"
    for s in later:
        s.close()
    for r in regions:
        r.close()


def assert_unmapped_once_released(address: int, kept: list[memoryview]) -> None:
    for m in kept:
        m.release()
    kept.clear()
    gc.collect()
    assert perms_at(address) == "", f"the held range stayed mapped: {perms_at(address)!r}"


def case_writer_keeps_a_slice() -> None:
    kept: list[memoryview] = []
    try:
        Secret.from_writer(32, lambda b: kept.append(b[0:32]))
    except StreamError:
        pass
    else:
        raise AssertionError("from_writer accepted a kept buffer")
    address = address_of(kept[0])
    assert_held_and_never_reused(address)
    assert_unmapped_once_released(address, kept)


def case_stream_keeps_a_slice() -> None:
    kept: list[memoryview] = []

    class Keeper:
        n = 0

        def readinto(self, b: memoryview) -> int:
            self.n += 1
            if self.n == 1:
                kept.append(b[0:16])
                b[0:4] = b"ABCD"
                return 4
            return 0

    try:
        Secret.from_stream(Keeper())
    except StreamError:
        pass
    else:
        raise AssertionError("from_stream accepted a kept buffer")
    address = address_of(kept[0])
    assert_held_and_never_reused(address)
    assert_unmapped_once_released(address, kept)


def case_region_view_kept_past_close() -> None:
    backing = str(params()["backing"])
    region = RegionGuard(32, allocator=allocator.Secure(backing=backing))  # type: ignore[arg-type]
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    kept: list[memoryview] = []
    try:
        with assoc.set_access_rights(RW) as g:
            kept.append(memoryview(g.mut_ref_guard()))
            kept[0][0:6] = b"s3cret"
    except ViewError:
        pass  # the export outlived the block: reported at its exit
    else:
        raise AssertionError("the export that outlived the block was not reported")
    address = address_of(kept[0])
    assoc.disassociate()
    region.close()
    key.close()
    assert_held_and_never_reused(address)
    assert_unmapped_once_released(address, kept)


def case_failed_munmap_is_retried() -> None:
    backing = str(params()["backing"])
    region = RegionGuard(32, allocator=allocator.Secure(backing=backing))  # type: ignore[arg-type]
    ctypes.memmove(region.address, b"s3cret", 6)
    address = region.address
    failinject.arm("munmap", errno.ENOMEM)
    try:
        region.close()
    except MprotectError:
        pass
    else:
        raise AssertionError("the failed munmap was not reported")
    assert failinject.failed("munmap") == 1
    failinject.reset()
    assert perms_at(address).startswith("---"), perms_at(address)
    assert read_by_kernel(address, 6) == bytes(6), "the kept range kept the secret's bytes"
    RegionGuard(8).close()  # a later release retries it
    assert perms_at(address) == "", f"the failed range was never unmapped: {perms_at(address)!r}"


def case_growth_munmap_failure_is_retried() -> None:
    # F3: the first core munmap of a growing fill (the outgrown copy) fails once
    before = {line.split()[0] for line in maps_lines()}
    failinject.arm("munmap", errno.ENOMEM)
    try:
        s = Secret.from_chunks([b"A" * 3000, b"B" * 3000, b"C" * 5000])
    except MprotectError:
        pass
    else:
        s.close()
    assert failinject.failed("munmap") == 1
    failinject.reset()
    RegionGuard(8).close()  # a later release retries whatever was kept
    gc.collect()
    left = [
        line
        for line in maps_lines()
        if line.split()[0] not in before
        and span_size(line) <= 16 * PAGE  # the copy is a few pages (not ASan's reservations)
        and ("secretmem" in line or line.split()[1].startswith("---"))
    ]
    assert not left, f"the outgrown copy stayed mapped: {left}"
