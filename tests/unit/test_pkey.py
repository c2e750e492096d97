from __future__ import annotations

import copy
import ctypes
import gc
import pickle
import random
from typing import Final

import pytest

from pkeyguard import (
    AccessPermissions,
    ArgumentTypeError,
    KeyStateError,
    PkeyGuard,
    PkeyPermissions,
    RegionError,
    RegionGuard,
    RegionTypeError,
    _backend,
)
from tests.support import perms_at

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess


def live_keys() -> int:
    return _backend.active()[1].live_keys()


@pytest.mark.usefixtures("no_leaks")
class TestKeyLifecycle:
    def test_create_and_close(self) -> None:
        before = live_keys()
        key = PkeyGuard(NA, name="secrets")
        assert live_keys() == before + 1
        assert key.rights is NA and key.key >= 1 and not key.closed
        assert "secrets" in repr(key)
        key.close()
        key.close()
        assert key.closed and live_keys() == before
        assert "closed" in repr(key)

    def test_context_manager_and_finalizer(self) -> None:
        before = live_keys()
        with PkeyGuard() as key:
            assert live_keys() == before + 1
        assert key.closed and live_keys() == before
        key2 = PkeyGuard()
        del key2
        gc.collect()
        assert live_keys() == before

    @pytest.mark.parametrize("rights", [0, "ReadWrite", None, AccessPermissions.ReadWrite])
    def test_bad_rights(self, rights: object) -> None:
        before = live_keys()
        with pytest.raises(ArgumentTypeError, match="PkeyPermissions"):
            PkeyGuard(rights)  # type: ignore[arg-type]
        assert live_keys() == before

    def test_not_copyable_or_picklable(self) -> None:
        with PkeyGuard() as key:
            for fn in (pickle.dumps, copy.copy, copy.deepcopy):
                with pytest.raises(TypeError):
                    fn(key)

    def test_use_after_close(self) -> None:
        key = PkeyGuard()
        key.close()
        with RegionGuard(8) as region:
            with pytest.raises(KeyStateError, match="closed"):
                key.associate(region)
            assert perms_at(region.address) == "rw-p"
        with pytest.raises(KeyStateError, match="closed"):
            key.current_rights()
        with pytest.raises(KeyStateError, match="closed"), key:
            pass


@pytest.mark.usefixtures("no_leaks")
class TestAssociation:
    def test_associate_applies_key_rights_and_disassociate_restores(self) -> None:
        with RegionGuard(ctypes.c_uint32) as region, PkeyGuard(NA) as key:
            assoc = key.associate(region)
            assert region.association is assoc and assoc.associated
            assert perms_at(region.address) == "---p"  # NoAccess key: pages closed
            assert key.current_rights() is NA
            back = assoc.disassociate()
            assert back is region and region.association is None and not assoc.associated
            assert perms_at(region.address) == "rw-p"
            with pytest.raises(RegionError, match="no longer associated"):
                assoc.set_access_rights(RW)

    @pytest.mark.parametrize(("rights", "perms"), [(NA, "---p"), (RO, "r--p"), (RW, "rw-p")])
    def test_initial_rights(self, rights: PkeyPermissions, perms: str) -> None:
        with RegionGuard(8) as region, PkeyGuard(rights) as key:
            key.associate(region)
            assert perms_at(region.address) == perms

    def test_key_rights_intersect_page_rights(self) -> None:
        with RegionGuard(8, AccessPermissions.ReadOnly) as region, PkeyGuard(RW) as key:
            assoc = key.associate(region)
            assert perms_at(region.address) == "r--p"
            with assoc.set_access_rights(RW):
                assert perms_at(region.address) == "r--p"

    def test_associate_twice_or_with_two_keys(self) -> None:
        with RegionGuard(8) as region, PkeyGuard() as k1, PkeyGuard() as k2:
            k1.associate(region)
            with pytest.raises(RegionError, match="already associated with this key"):
                k1.associate(region)
            with pytest.raises(RegionError, match=f"already associated with key {k1.key}"):
                k2.associate(region)
            assert len(k1.regions) == 1 and k2.regions == ()
            assert perms_at(region.address) == "---p"

    def test_associate_bad_input(self) -> None:
        with PkeyGuard() as key:
            with pytest.raises(RegionTypeError):
                key.associate(object())  # type: ignore[arg-type]
            region = RegionGuard(8)
            region.close()
            with pytest.raises(RegionError, match="closed"):
                key.associate(region)
            assert key.regions == ()

    def test_disassociate_through_key(self) -> None:
        with RegionGuard(8) as region, PkeyGuard() as key, PkeyGuard() as other:
            key.associate(region)
            with pytest.raises(RegionError, match="not associated"):
                other.disassociate(region)
            assert key.disassociate(region) is region
            assert perms_at(region.address) == "rw-p"

    def test_close_key_untags_its_regions(self) -> None:
        with RegionGuard(8) as r1, RegionGuard(8) as r2:
            key = PkeyGuard(NA)
            a1 = key.associate(r1)
            key.associate(r2)
            key.close()
            assert perms_at(r1.address) == "rw-p" and perms_at(r2.address) == "rw-p"
            assert r1.association is None and not a1.associated
            # the region can be associated again with a new key
            with PkeyGuard() as again:
                again.associate(r1)

    def test_close_region_while_associated_detaches_it(self) -> None:
        with PkeyGuard() as key:
            region = RegionGuard(8)
            key.associate(region)
            address = region.address
            region.close()
            assert key.regions == () and perms_at(address) == ""

    def test_refuse_close_while_guard_active(self) -> None:
        with RegionGuard(8) as region, PkeyGuard() as key:
            assoc = key.associate(region)
            with assoc.set_access_rights(RW):
                with pytest.raises(KeyStateError, match="still active"):
                    key.close()
                with pytest.raises(RegionError, match="active"):
                    region.close()
                with pytest.raises(RegionError, match="active"):
                    assoc.disassociate()
                assert not key.closed and not region.closed
                assert perms_at(region.address) == "rw-p"
            assert perms_at(region.address) == "---p"

    def test_each_refusal_leaves_everything_as_it_was(self) -> None:
        # The refusals are made by the C call that makes the change (there is no separate
        # Python check for another thread to slip past): each leaves keys, tags, page rights
        # and associations as they were.
        with RegionGuard(8) as region, PkeyGuard() as key:
            assoc = key.associate(region)
            with assoc.set_access_rights(RW) as guard:
                with pytest.raises(KeyStateError, match="still active"):
                    key.close()
                with pytest.raises(RegionError, match="still active"):
                    region.close()
                with pytest.raises(RegionError, match="still active"):
                    assoc.disassociate()
                with pytest.raises(RegionError, match="still active"):
                    region.protect(AccessPermissions.ReadOnly)
                assert not key.closed and not region.closed
                assert region.association is assoc and key.regions == (assoc,)
                assert region.access is AccessPermissions.ReadWrite
                assert perms_at(region.address) == "rw-p"
                guard.mut_ref_guard().value = b"usable!!"
            assert perms_at(region.address) == "---p"
            key.close()
            assert region.association is None and perms_at(region.address) == "rw-p"

    def test_a_guard_pins_its_own_region_only(self) -> None:
        # A region can be closed, detached or re-protected while a guard on *another* region
        # of the same key is active: no view of it can exist.  The key itself stays pinned.
        with RegionGuard(8) as busy, PkeyGuard() as key:
            first = key.associate(busy)
            other = RegionGuard(8)
            second = key.associate(other)
            with first.set_access_rights(RW):
                other.protect(AccessPermissions.ReadOnly)
                assert second.disassociate() is other
                other.close()
                with pytest.raises(KeyStateError, match="still active"):
                    key.close()
            assert key.regions == (first,)


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("seed", [18, 1802])
def test_regions_stay_listed_whatever_order_they_leave(seed: int) -> None:
    # A key drops an association from its list in O(1) (the last one takes its slot): every
    # association still listed, whatever the order of the others' leaving, keeps getting the
    # key's rights, and one that left is gone from the list.
    rng = random.Random(seed)
    with PkeyGuard(NA) as key:
        regions = [RegionGuard(ctypes.c_int) for _ in range(40)]
        assocs = {id(r): key.associate(r) for r in regions}
        live = list(regions)
        step = 0
        while live:
            region = live.pop(rng.randrange(len(live)))
            if step % 3 == 0:
                assocs.pop(id(region)).disassociate()
            elif step % 3 == 1:
                key.disassociate(region)
                del assocs[id(region)]
            else:
                del assocs[id(region)]
                region.close()
            step += 1
            listed = sorted(id(a.region) for a in key.regions)
            assert listed == sorted(id(r) for r in live), step
            for r in live:
                assert perms_at(r.address) == "---p", (step, "a listed region lost the key")
            if live:
                with assocs[id(live[0])].set_access_rights(RW) as guard:
                    guard.mut_ref_guard().value = step
                    assert all(perms_at(r.address) == "rw-p" for r in live)
        for r in regions:
            r.close()


@pytest.mark.parametrize("module", ["user", "pkeyguard", "pkeyguard.mine"])
def test_no_class_can_be_subclassed_once_pkeyguard_is_imported(module: str) -> None:
    # A __module__ can claim anything: a class that names pkeyguard's own got past the
    # module check (found while attacking the release: a spoofed key subclass ran __del__
    # inside close()).  Once pkeyguard is imported, none is accepted.
    import pkeyguard
    from pkeyguard import views
    from pkeyguard.pkey import AccessGuard, AssociatedRegion, ReadGuard, WriteGuard

    bases: list[type] = [
        PkeyGuard,
        RegionGuard,
        pkeyguard.Secret,
        AssociatedRegion,
        AccessGuard,
        ReadGuard,
        WriteGuard,
        views.BytesRef,
        views.MutScalarRef,
    ]
    for base in bases:
        with pytest.raises(TypeError, match="cannot be subclassed"):
            type("Mine", (base,), {"__module__": module, "__slots__": ()})
