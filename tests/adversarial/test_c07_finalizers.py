"""Class 7: finalizers release memory and keys exactly once, whatever the order in which
objects die: region and key dropped together (both orders, in cycles), resurrection by
``__del__``, gc at any point (threshold 1), interpreter exit with a daemon thread working
inside a guard, secrets still open at exit.  The public classes are final.  The child
programs: children/c07_finalizers.py."""

from __future__ import annotations

import re

import pytest

from tests.adversarial.children import c07_finalizers as child_module
from tests.adversarial.support import assert_survived, run_case

CHILD = "c07_finalizers"


@pytest.mark.parametrize("shape", ["plain", "cycle"])
@pytest.mark.parametrize("order", ["key-first", "region-first"])
def test_region_and_key_dropped_together(order: str, shape: str) -> None:
    """Class 7: a key and its region dropped together (created in either order, alone or
    in a reference cycle with the association and guard) are both released once: keys back
    to the start, no mapping left, no error in a finalizer (the old key finalizer
    re-protects pages the region finalizer already unmapped: ENOMEM, and the key leaks)."""
    child = run_case(
        CHILD,
        "case_region_and_key_dropped_together",
        params={"order": order, "shape": shape, "rounds": 30},
    )
    assert_survived(child, quiet=True)


@pytest.mark.parametrize("what", sorted(child_module.RESURRECT))
def test_resurrection_by_del(what: str) -> None:
    """Class 7: an object whose __del__ resurrects a region (plain or Secure), a
    key+region+association, or a Secret: the resurrected objects are either still mapped
    and usable or closed (never open over unmapped pages); closing them later never unmaps
    or touches somebody else's pages; everything is released exactly once (the old region
    finalizer unmaps before __del__ runs and leaves the region looking open)."""
    child = run_case(CHILD, "case_resurrection_by_del", params={"what": what})
    assert_survived(child, quiet=True)


@pytest.mark.parametrize("kind", ["scalar", "bytes-cycle"])
def test_exit_while_daemon_works_inside_guard(kind: str) -> None:
    """Class 7: the interpreter exits while a daemon thread writes the region in a loop
    inside a guard (an atexit hook that sleeps lets it run after the library's own exit
    hooks): the region is not unmapped under it and the process exits 0 (the old exit
    finalizer unmaps it: SIGSEGV)."""
    child = run_case(
        CHILD,
        "case_exit_while_daemon_works_inside_guard",
        params={"kind": kind},
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


@pytest.mark.parametrize("daemon", [False, True], ids=["alone", "daemon-revealing-another"])
def test_secrets_open_at_exit_are_wiped(daemon: bool) -> None:
    """Class 7: secrets still open at interpreter exit (one referenced, one only in a
    reference cycle) are zeroed before unmapping, also while a daemon thread keeps
    revealing another secret (the old exit close is refused while any secret is revealed:
    the two secrets stay unwiped)."""
    child = run_case(
        CHILD,
        "case_secrets_open_at_exit_are_wiped",
        params={"daemon": daemon},
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)
    # The one in a cycle may be collected (and wiped) before exit, by any GC run: count every
    # wipe; each secret must be wiped exactly once, zeroed.
    wiped = re.findall(r"WIPED (\d)", child.stdout)
    assert wiped.count("1") == 2 and "0" not in wiped, f"wipes: {wiped}\n{child}"


@pytest.mark.parametrize("secret", [False, True], ids=["no-secret", "secret"])
@pytest.mark.parametrize("order", ["key-first", "region-first"])
def test_exit_with_open_key_and_region_is_clean(order: str, secret: bool) -> None:
    """Class 7: a key and an associated region (and a Secret) still open at interpreter
    exit are released by the exit hooks without an error (the old hooks release the region
    before the key whenever the key is older, and the key's untagging fails)."""
    child = run_case(
        CHILD,
        "case_exit_with_open_key_and_region_is_clean",
        params={"order": order, "secret": secret},
        watchdog=30,
    )
    assert_survived(child, quiet=True)


def test_hunt_gc_pressure_and_finalizer_order() -> None:
    """Class 7 (hypothesis, in the child): with gc.set_threshold(1), random sequences of
    regions, Secure regions, key+region pairs (both creation orders) and secrets, dropped
    plainly, in reference cycles, behind objects with __del__, or resurrected by __del__;
    resurrected objects are usable or closed, and afterwards nothing leaks and no finalizer
    fails."""
    child = run_case(CHILD, "case_hunt", params={"examples": 60}, timeout=150, watchdog=120)
    assert_survived(child)


def test_public_classes_are_final() -> None:
    """Class 7: RegionGuard, PkeyGuard, AssociatedRegion, the guard and view classes and
    Secret cannot be subclassed outside pkeyguard (TypeError)."""
    child = run_case(
        CHILD, "case_classes_are_final", params={"allocators": False}, timeout=60, watchdog=30
    )
    assert_survived(child)


def test_allocator_classes_are_final() -> None:
    """Class 7 (allocators paragraph): allocator.Allocator, Mmap and Secure cannot be
    subclassed outside pkeyguard (TypeError): region memory comes only from the library's
    own allocators."""
    child = run_case(
        CHILD, "case_classes_are_final", params={"allocators": True}, timeout=60, watchdog=30
    )
    assert_survived(child)
