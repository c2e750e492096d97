from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from pkeyguard import (
    AssociatedRegion,
    GuardOrderError,
    GuardStateError,
    GuardThreadError,
    NoAccessGuard,
    PkeyGuard,
    PkeyPermissions,
    ReadGuard,
    RegionGuard,
    ViewError,
    WriteGuard,
    _core,
)
from tests.adversarial.support import run_case
from tests.support import perms_at

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess


@pytest.fixture
def assoc(no_leaks: None) -> Iterator[AssociatedRegion[ctypes.c_uint32]]:
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard(NA) as key:
        yield key.associate(region)


def in_thread(fn: Callable[[], Any]) -> Any:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result[0]


def test_guard_classes_follow_rights(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    assert type(assoc.set_access_rights(RW)) is WriteGuard
    assert type(assoc.set_access_rights(RO)) is ReadGuard
    assert type(assoc.set_access_rights(NA)) is NoAccessGuard
    assert assoc.set_access_rights(RO).rights is RO
    assert assoc.set_access_rights(RO).region is assoc.region


def test_rights_switch_and_revert(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    key, address = assoc.key, assoc.region.address
    assert perms_at(address) == "---p"
    with assoc.set_access_rights(RW) as g:
        assert g.active and key.active_guards == 1
        assert key.current_rights() is RW and perms_at(address) == "rw-p"
        ctypes.c_uint32.from_address(address).value = 7  # a raw write works inside
    assert not g.active and key.active_guards == 0
    assert key.current_rights() is NA and perms_at(address) == "---p"
    with assoc.set_access_rights(RO):
        assert perms_at(address) == "r--p"
        assert ctypes.c_uint32.from_address(address).value == 7
    assert perms_at(address) == "---p"


def test_rights_revert_when_the_block_raises(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    with pytest.raises(KeyError), assoc.set_access_rights(RW):
        raise KeyError("boom")
    assert perms_at(assoc.region.address) == "---p"
    assert _core.thread_guards() == []


def test_nested_guards_restore_each_level(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    key, address = assoc.key, assoc.region.address
    with assoc.set_access_rights(RW):
        with assoc.set_access_rights(RO):
            assert key.current_rights() is RO and perms_at(address) == "r--p"
            with assoc.set_access_rights(NA):
                assert perms_at(address) == "---p"
                with assoc.set_access_rights(RW):
                    assert perms_at(address) == "rw-p"
                assert perms_at(address) == "---p"
            assert perms_at(address) == "r--p"
        assert key.current_rights() is RW and perms_at(address) == "rw-p"
    assert perms_at(address) == "---p"


def test_guard_is_reusable_but_not_reentrant(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    g = assoc.set_access_rights(RW)
    with g:
        pass
    with g:
        with pytest.raises(GuardStateError, match="already active"):
            g.__enter__()
    assert perms_at(assoc.region.address) == "---p"


def test_each_call_gives_a_new_guard(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    # Two callers never share a guard: taking both first, then nesting them, works.
    outer, inner = assoc.set_access_rights(RW), assoc.set_access_rights(RW)
    assert outer is not inner
    with outer, inner:
        assert outer.active and inner.active and assoc.key.active_guards == 2
    assert perms_at(assoc.region.address) == "---p"


def test_a_leftover_export_spoils_only_its_own_exit(
    assoc: AssociatedRegion[ctypes.c_uint32],
) -> None:
    g = assoc.set_access_rights(RW)
    kept: list[memoryview] = []
    with pytest.raises(ViewError, match="outlived"), g:
        kept.append(memoryview(g.mut_ref_guard()))
    with g:  # a later activation of the same guard is not blamed for it
        pass
    kept[0].release()
    with g:
        pass


def test_exit_without_enter(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    with pytest.raises(GuardStateError, match="not active"):
        assoc.set_access_rights(RW).__exit__(None, None, None)


def test_out_of_order_exit_unwinds_consistently(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    address = assoc.region.address
    outer = assoc.set_access_rights(RW)
    inner = assoc.set_access_rights(RO)
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(GuardOrderError, match="out of order") as info:
        outer.__exit__(None, None, None)
    assert "ExitStack" in str(info.value)  # the advice is part of the message
    # both are unwound: rights as before the outer guard
    assert not outer.active and not inner.active
    assert perms_at(address) == "---p" and assoc.key.current_rights() is NA
    assert _core.thread_guards() == [] and assoc.key.active_guards == 0
    with pytest.raises(GuardOrderError, match="already exited"):
        inner.__exit__(None, None, None)
    with pytest.raises(GuardStateError):
        inner.__exit__(None, None, None)


def test_out_of_order_across_keys(no_leaks: None) -> None:
    with RegionGuard(8) as r1, RegionGuard(8) as r2, PkeyGuard() as k1, PkeyGuard() as k2:
        a1, a2 = k1.associate(r1), k2.associate(r2)
        g1, g2 = a1.set_access_rights(RW), a2.set_access_rights(RW)
        g1.__enter__()
        g2.__enter__()
        with pytest.raises(GuardOrderError):
            g1.__exit__(None, None, None)
        assert perms_at(r1.address) == "---p" and perms_at(r2.address) == "---p"


def test_exit_on_another_thread_is_refused(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    g = assoc.set_access_rights(RW)
    g.__enter__()
    err = in_thread(lambda: g.__exit__(None, None, None))
    assert isinstance(err, GuardThreadError)
    assert "per thread" in str(err)
    assert g.active and g.thread == threading.get_ident()
    g.__exit__(None, None, None)
    assert perms_at(assoc.region.address) == "---p"


def test_guard_from_another_thread_is_its_own(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    def work() -> tuple[bool, list[Any]]:
        with assoc.set_access_rights(RW) as g:
            return g.active, _core.thread_guards()

    active, stack = in_thread(work)
    assert active and len(stack) == 1
    assert _core.thread_guards() == []


def test_mprotect_union_of_threads(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    """mprotect backend: the pages get the most permissive of all threads' current rights."""
    address = assoc.region.address
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with assoc.set_access_rights(RO):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(10)
    assert perms_at(address) == "r--p"
    with assoc.set_access_rights(RW):
        assert perms_at(address) == "rw-p"
        with assoc.set_access_rights(NA):
            # this thread asks for none, the other still holds ReadOnly
            assert perms_at(address) == "r--p"
        assert perms_at(address) == "rw-p"
    assert perms_at(address) == "r--p"
    release.set()
    t.join()
    assert perms_at(address) == "---p"


def test_touching_memory_without_a_guard_faults() -> None:
    child = run_case(
        "tests.unit.children.h_guard",
        "case_touching_memory_without_a_guard_faults",
        env={"PKEYGUARD_BACKEND": "mprotect"},
        fault_handler=False,
    )
    assert child.returncode == -signal.SIGSEGV, child
    assert "inside ok" in child.stdout and "NOT REACHED" not in child.stdout


def test_write_under_read_only_faults() -> None:
    child = run_case(
        "tests.unit.children.h_guard",
        "case_write_under_read_only_faults",
        env={"PKEYGUARD_BACKEND": "mprotect"},
        fault_handler=False,
    )
    assert child.returncode == -signal.SIGSEGV, child
    assert child.stdout.strip() == "0"


def test_a_recycled_guard_is_a_new_guard(no_leaks: None) -> None:
    # set_access_rights() reuses the memory of dropped guards; what it returns must still be
    # a new, inactive guard of the association it was asked for, with nothing of the old one.
    with (
        RegionGuard(ctypes.c_uint32) as r1,
        RegionGuard(ctypes.c_uint32) as r2,
        PkeyGuard(NA) as k1,
        PkeyGuard(NA) as k2,
    ):
        a1, a2 = k1.associate(r1), k2.associate(r2)
        for _ in range(3):
            old = a1.set_access_rights(RW)
            with old:
                old.mut_ref_guard().value = 7
            del old
            new = a2.set_access_rights(RW)
            assert type(new) is WriteGuard and new.rights is RW
            assert new.key is k2 and new.region is r2 and new._binding is a2
            assert not new.active and new.thread is None and new.exports == 0
            with new:
                assert new.mut_ref_guard().value == 0
            assert perms_at(r1.address) == perms_at(r2.address) == "---p"
            kept = [a1.set_access_rights(RO) for _ in range(20)]
            assert len({id(g) for g in kept}) == 20
            del kept, new


def test_a_finalizer_added_to_a_guard_class_still_runs(
    assoc: AssociatedRegion[ctypes.c_uint32],
) -> None:
    # The registered guard classes get a lean deallocator; a __del__ set on the class later
    # must still run (CPython's own deallocator takes over for it).
    seen: list[PkeyPermissions] = []
    WriteGuard.__del__ = lambda self: seen.append(self.rights)  # type: ignore[attr-defined]
    try:
        g = assoc.set_access_rights(RW)
        with g:
            pass
        del g
    finally:
        del WriteGuard.__del__  # type: ignore[attr-defined]
    assert seen == [RW]
    g = assoc.set_access_rights(RW)
    del g
    assert seen == [RW]
