"""Issue 18, class 2 (mapping side): a region never shares a mapping entry with its
neighbours, so changing its protection never splits an entry and cannot hit vm.max_map_count.

Two plain regions made one after the other lie next to each other; closed alike, the kernel
merged them into one mapping entry, and opening one split it: at vm.max_map_count (filled with
plain mmap.mmap objects) that mprotect failed with ENOMEM.  With a spacer page on each side
(PROT_NONE, MADV_DONTDUMP: never mergeable with the region) the entry is the region's own."""

from __future__ import annotations

import gc
import mmap

from pkeyguard import PkeyGuard, RegionGuard
from tests.adversarial.childlib import NA, RW


def entries_over(address: int, length: int) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo < address + length and address < hi:
                found.append((lo, hi))
    return found


def case_protection_changes_at_the_mapping_limit() -> None:
    size = 4 * mmap.PAGESIZE
    regions = [RegionGuard(size) for _ in range(8)]
    keys = [PkeyGuard(NA) for _ in regions]
    assocs = [k.associate(r) for k, r in zip(keys, regions, strict=True)]
    for assoc in assocs:  # warm up every path once
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[0:1] = b"x"
    for r in regions:
        # the region's pages are one entry of their own, shared with nothing
        near = [(hex(a), hex(b)) for a, b in entries_over(r.address - 1, size + 2)]
        assert entries_over(r.address, size) == [(r.address, r.address + size)], (
            f"{r.address:#x} shares its entry: {near}"
        )
    gc.collect()
    gc.disable()
    filler: list[mmap.mmap] = []
    try:
        while True:
            filler.append(mmap.mmap(-1, mmap.PAGESIZE))
    except OSError:
        pass
    # at the limit: every guard still enters and exits
    opened = 0
    for assoc in assocs:
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[1:2] = b"y"
            opened += 1
    filler.clear()
    gc.enable()
    assert opened == len(assocs)
    for k in keys:
        k.close()
    for r in regions:
        r.close()
    print("filled", "opened", opened)
