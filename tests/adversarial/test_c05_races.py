"""Class 5: races between threads.

Two threads associate the same regions with two keys at once; several threads close,
disassociate and repr() the same key, regions and associations at once (with a tiny GIL
switch interval, so that threads interleave inside the library's Python code).  The child
programs: children/c05_races.py.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case

CHILD = "c05_races"


def test_two_keys_associate_the_same_regions_on_two_threads() -> None:
    """Class 5: two threads associate the same four regions with two keys (opposite orders)
    at once: each region ends up with exactly one key (the other call raises RegionError),
    the losing key does not list it, and closing the loser leaves the region NoAccess."""
    child = run_case(
        CHILD,
        "case_two_keys_associate_the_same_regions_on_two_threads",
        params={"rounds": 300, "regions": 8},
        timeout=90,
        watchdog=60,
    )
    assert_survived(child)


def test_concurrent_close_repr_disassociate() -> None:
    """Class 5: three threads race region.close(), key.close(), disassociate() (both
    spellings), repr() of all three objects and short guard blocks on one key and three
    regions: only pkeyguard errors are raised (no AttributeError/ValueError from the
    core), repr() never raises, each region is released exactly once, nothing leaks."""
    child = run_case(
        CHILD,
        "case_concurrent_close_repr_disassociate",
        params={"rounds": 250, "ops": 20, "seed": 5},
        timeout=120,
        watchdog=90,
    )
    assert_survived(child)
