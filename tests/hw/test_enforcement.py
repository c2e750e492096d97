"""The CPU, not the library, stops wrong accesses: each test dies or fails without WRPKRU."""

from __future__ import annotations

import ctypes
import re
import signal
import threading
from typing import Final

import pytest

import pkeyguard
from pkeyguard import AccessPermissions, PkeyGuard, PkeyPermissions, RegionGuard, _core
from tests.adversarial.support import run_case
from tests.support import Child

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess

CHILD = "tests.hw.children.h_enforcement"


def run_probe(case: str, faultprobe_path: str) -> Child:
    env = {"FAULTPROBE": faultprobe_path, "PKEYGUARD_BACKEND": "pku"}
    return run_case(CHILD, case, env=env, fault_handler=False)


def assert_pku_fault(child: Child) -> None:
    assert child.returncode == -signal.SIGSEGV, child
    key = int(re.search(r"KEY (\d+)", child.stdout).group(1))  # type: ignore[union-attr]
    m = re.search(r"FAULT signo=(\d+) code=(\d+) pkey=(-?\d+)", child.stderr)
    assert m, child.stderr
    assert int(m.group(1)) == signal.SIGSEGV
    assert int(m.group(2)) == 4, "si_code must be SEGV_PKUERR (4)"
    assert int(m.group(3)) == key
    assert "NOT REACHED" not in child.stdout


def test_seed_example_on_pku() -> None:
    assert pkeyguard.backend().name == "pku" and pkeyguard.backend().per_thread
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard(NA) as pkey:
        associated = pkey.associate(region)
        with associated.set_access_rights(RW) as write_guard:
            value = write_guard.mut_ref_guard()
            value.value = 123
            assert value.value == 123
        with associated.set_access_rights(RO) as read_guard:
            assert read_guard.ref_guard().value == 123
        assert pkey.current_rights() is NA


def test_raw_write_under_read_only_dies_with_pkuerr(faultprobe_path: str) -> None:
    child = run_probe("case_write_under_read_only", faultprobe_path)
    assert "read 42" in child.stdout
    assert_pku_fault(child)


def test_raw_read_under_no_access_dies_with_pkuerr(faultprobe_path: str) -> None:
    child = run_probe("case_read_under_no_access", faultprobe_path)
    assert_pku_fault(child)


def test_raw_read_outside_any_guard_dies_with_pkuerr(faultprobe_path: str) -> None:
    child = run_probe("case_read_outside_any_guard", faultprobe_path)
    assert_pku_fault(child)


def test_page_rights_still_apply_under_a_read_write_key(faultprobe_path: str) -> None:
    # Effective access = page rights ∩ key rights: a read-only page faults as ACCERR (2).
    child = run_probe("case_page_rights_under_read_write", faultprobe_path)
    assert child.returncode == -signal.SIGSEGV and "read 42" in child.stdout
    assert re.search(r"FAULT signo=11 code=2 pkey=-1", child.stderr), child.stderr


def test_per_thread_rights_other_thread_faults(faultprobe_path: str) -> None:
    child = run_probe("case_other_thread", faultprobe_path)
    assert "A reads 42" in child.stdout and "B rights NoAccess" in child.stdout
    assert_pku_fault(child)


def test_per_thread_rights_without_crashing() -> None:
    with RegionGuard(ctypes.c_int) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        seen: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def holder() -> None:
            with assoc.set_access_rights(RW):
                seen.append(key.current_rights().name)
                inside.set()
                release.wait(10)

        t = threading.Thread(target=holder)
        t.start()
        inside.wait(10)
        assert seen == ["ReadWrite"]
        assert key.current_rights() is NA  # this thread is unaffected
        release.set()
        t.join()


def test_thread_started_inside_a_guard_inherits_its_rights() -> None:
    """Documented rule: a new thread copies its creator's PKRU at creation."""
    with RegionGuard(ctypes.c_int) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        before_key: list[str] = []
        # a thread that exists before the guard keeps its own (closed) rights
        go = threading.Event()

        def early_thread() -> None:
            go.wait(10)
            before_key.append(key.current_rights().name)

        early = threading.Thread(target=early_thread)
        early.start()
        inherited: list[str] = []
        with assoc.set_access_rights(RW):
            t = threading.Thread(target=lambda: inherited.append(key.current_rights().name))
            t.start()
            t.join()
            go.set()
            early.join()
        assert inherited == ["ReadWrite"]
        assert before_key == ["NoAccess"]


def test_pkru_restored_exactly_after_each_exit() -> None:
    with RegionGuard(8) as r1, RegionGuard(8) as r2, PkeyGuard(NA) as k1, PkeyGuard(RO) as k2:
        a1, a2 = k1.associate(r1), k2.associate(r2)
        start = _core.rdpkru()
        shift1, shift2 = 2 * (k1.hardware_key or 0), 2 * (k2.hardware_key or 0)
        assert k1.hardware_key and k2.hardware_key
        assert (start >> shift1) & 3 == 1 and (start >> shift2) & 3 == 2
        with a1.set_access_rights(RW):
            p1 = _core.rdpkru()
            assert (p1 >> shift1) & 3 == 0 and p1 & ~(3 << shift1) == start & ~(3 << shift1)
            with a2.set_access_rights(RW):
                p2 = _core.rdpkru()
                assert (p2 >> shift2) & 3 == 0
                with a1.set_access_rights(RO):
                    assert (_core.rdpkru() >> shift1) & 3 == 2
                    with a1.set_access_rights(NA):
                        assert (_core.rdpkru() >> shift1) & 3 == 1
                    assert (_core.rdpkru() >> shift1) & 3 == 2
                assert _core.rdpkru() == p2
            assert _core.rdpkru() == p1
        assert _core.rdpkru() == start


def test_exit_restores_only_its_own_bits(faultprobe: ctypes.CDLL) -> None:
    faultprobe.faultprobe_wrpkru.argtypes = [ctypes.c_uint32]
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW):
            # someone else changes another key's bits meanwhile (key 15 is never ours here)
            faultprobe.faultprobe_wrpkru(_core.rdpkru() ^ (1 << 30))
            marker = _core.rdpkru() & (3 << 30)
        assert _core.rdpkru() & (3 << 30) == marker
        assert (_core.rdpkru() >> (2 * (key.hardware_key or 0))) & 3 == 1
        faultprobe.faultprobe_wrpkru(_core.rdpkru() ^ (1 << 30))


def test_out_of_order_exit_leaves_pkru_consistent() -> None:
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        start = _core.rdpkru()
        outer, inner = assoc.set_access_rights(RW), assoc.set_access_rights(RO)
        outer.__enter__()
        inner.__enter__()
        with pytest.raises(pkeyguard.GuardOrderError):
            outer.__exit__(None, None, None)
        assert _core.rdpkru() == start


def test_views_expire_instead_of_faulting() -> None:
    with RegionGuard(ctypes.c_int) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            v = g.mut_ref_guard()
            v.value = 5
        try:
            _ = v.value
        except pkeyguard.ViewError:
            pass
        else:
            raise AssertionError("an expired view must raise")
        assert region.access is AccessPermissions.ReadWrite
