"""Class 6: identity.  Objects that own a key, memory or a guard activation cannot be
constructed around the library, copied or pickled; set_access_rights() hands out a new guard
on every call; a leftover memoryview spoils only its own activation's exit; a Secret does
not expose its library-owned key and region.  The child programs: children/c06_identity.py."""

from __future__ import annotations

import pytest

from tests.adversarial.children import c06_identity as child
from tests.adversarial.support import assert_survived, run_case

CHILD = "c06_identity"


@pytest.mark.parametrize("what", sorted(child.CONSTRUCT))
def test_direct_construction_is_refused(what: str) -> None:
    """Class 6: AssociatedRegion(key, region), the guard classes and the view classes
    cannot be constructed directly from their public names (TypeError): such an object
    would bypass the checks association and views rely on."""
    child = run_case(
        CHILD,
        "case_direct_construction_is_refused",
        params={"what": what},
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_copy_and_pickle_are_refused() -> None:
    """Class 6: copy.copy, copy.deepcopy and pickle (every protocol) of PkeyGuard,
    RegionGuard, AssociatedRegion, guards (idle and active), views and Secret raise
    TypeError (the old AssociatedRegion can be shallow-copied)."""
    assert_survived(run_case(CHILD, "case_copy_and_pickle_are_refused", timeout=60, watchdog=30))


def test_set_access_rights_returns_a_new_guard_per_call() -> None:
    """Class 6: every set_access_rights() call returns a new guard, so two callers never
    share one: two guards taken before either is entered nest, and two threads taking
    ReadOnly guards at the same moment never get "already active" (the old code caches one
    guard per rights value)."""
    assert_survived(
        run_case(
            CHILD, "case_set_access_rights_returns_a_new_guard_per_call", timeout=60, watchdog=30
        )
    )


def test_leftover_memoryview_spoils_only_its_own_activation() -> None:
    """Class 6: a memoryview left over from one activation makes that exit raise ViewError;
    later activations of the same guard (while it is still alive, and after it is
    released) exit cleanly (the old core counts exports per guard, forever)."""
    assert_survived(
        run_case(
            CHILD,
            "case_leftover_memoryview_spoils_only_its_own_activation",
            timeout=60,
            watchdog=30,
        )
    )


def test_secret_hides_its_key_and_region() -> None:
    """Class 6: secret.key and secret.region are gone (AttributeError): the shared library
    key and the region must not be closed or associated by callers; secret.address gives
    the address for diagnostics."""
    assert_survived(
        run_case(CHILD, "case_secret_hides_its_key_and_region", timeout=60, watchdog=30)
    )


def test_rights_that_only_compare_equal_are_refused() -> None:
    """Class 6: set_access_rights() with an object that merely compares equal to (and
    hashes like) PkeyPermissions.ReadWrite is refused; the old code's guard cache hands it
    a cached WriteGuard."""
    assert_survived(
        run_case(CHILD, "case_rights_that_only_compare_equal_are_refused", timeout=60, watchdog=30)
    )
