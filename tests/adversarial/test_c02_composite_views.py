"""Class 2: composite views hand out checked proxies, never raw ctypes objects over region
memory, and anything obtained from them raises ViewError after the guard exits; Structures
holding pointers are refused at RegionGuard().  The child programs:
children/c02_composite_views.py."""

from __future__ import annotations

import pytest

from tests.adversarial.children import c02_composite_views as child
from tests.adversarial.support import assert_survived, run_case


def test_slices_of_composite_arrays_are_checked_proxies() -> None:
    """Class 2: slicing arrays of Structures (and of arrays), directly and nested, gives
    checked proxies; after the guard exits each one raises ViewError (the old code hands
    out raw ctypes objects over region memory: reading one after the block faults)."""
    assert_survived(run_case("c02_composite_views", "case_slices", timeout=60, watchdog=30))


def test_hunt_access_paths_through_composites() -> None:
    """Class 2 (hypothesis, in the child): random walks through nested Structures, Unions,
    arrays of Structures and arrays of arrays (fields, indices, slices with steps,
    iteration): nothing handed out is a raw ctypes object, and every proxy obtained raises
    ViewError once the guard exited (also after the region was closed)."""
    child = run_case(
        "c02_composite_views",
        "case_hunt",
        params={"examples": 150},
        timeout=150,
        watchdog=120,
    )
    assert_survived(child)


@pytest.mark.parametrize("layout", sorted(child.LAYOUTS))
@pytest.mark.parametrize("pointer", sorted(child.POINTER_FIELDS))
def test_structures_holding_pointers_are_refused(pointer: str, layout: str) -> None:
    """Class 2: a Structure/Union holding a pointer (directly, in a nested Structure, or in
    an array field) is refused at RegionGuard() with RegionTypeError, and nothing is mapped
    or leaked."""
    assert_survived(
        run_case(
            "c02_composite_views",
            "case_pointer_structure_refused",
            params={"pointer": pointer, "layout": layout},
            timeout=60,
            watchdog=30,
        )
    )
