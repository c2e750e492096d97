from __future__ import annotations

import ctypes
import re
import signal
from collections.abc import Iterator
from typing import Final

import pytest

from pkeyguard import (
    ArgumentTypeError,
    AssociatedRegion,
    PkeyGuard,
    PkeyPermissions,
    RegionGuard,
    _core,
    isolate,
    isolated,
)
from tests.adversarial.support import run_case
from tests.support import perms_at

RW: Final = PkeyPermissions.ReadWrite


@pytest.fixture
def two(
    no_leaks: None,
) -> Iterator[tuple[AssociatedRegion[ctypes.c_int], AssociatedRegion[ctypes.c_int]]]:
    with (
        RegionGuard(ctypes.c_int) as r1,
        RegionGuard(ctypes.c_int) as r2,
        PkeyGuard(RW) as k1,
        PkeyGuard(RW) as k2,
    ):
        yield k1.associate(r1), k2.associate(r2)


def test_isolated_closes_every_key_and_restores(
    two: tuple[AssociatedRegion[ctypes.c_int], AssociatedRegion[ctypes.c_int]],
) -> None:
    a1, a2 = two
    assert perms_at(a1.region.address) == "rw-p" == perms_at(a2.region.address)
    with isolated() as closed:
        assert {a1.key, a2.key} <= set(closed)
        assert perms_at(a1.region.address) == "---p" == perms_at(a2.region.address)
        # a guard inside the isolation opens what it names, and nests
        with a1.set_access_rights(RW):
            assert perms_at(a1.region.address) == "rw-p"
        assert perms_at(a1.region.address) == "---p"
    assert perms_at(a1.region.address) == "rw-p" == perms_at(a2.region.address)
    assert _core.thread_guards() == []


def test_allow_list_and_exceptions(
    two: tuple[AssociatedRegion[ctypes.c_int], AssociatedRegion[ctypes.c_int]],
) -> None:
    a1, a2 = two
    with pytest.raises(ZeroDivisionError), isolated(allow=[a2.key]):
        assert perms_at(a1.region.address) == "---p"
        assert perms_at(a2.region.address) == "rw-p"
        _ = 1 / 0
    assert perms_at(a1.region.address) == "rw-p"
    with pytest.raises(ArgumentTypeError, match="allow="), isolated(allow=[object()]):  # type: ignore[list-item]
        pass


@pytest.mark.parametrize("allow", [None, 3, "not a key list"], ids=["None", "int", "str"])
def test_allow_that_is_no_list_of_keys_is_an_argument_type_error(allow: object) -> None:
    # a str is iterable: its items are refused one by one, with the same error
    with pytest.raises(ArgumentTypeError, match="allow="):
        isolated(allow=allow)  # type: ignore[arg-type]


def test_a_single_key_as_allow_says_how_to_pass_it(no_leaks: None) -> None:
    with PkeyGuard(RW) as key, pytest.raises(ArgumentTypeError, match=r"allow=\[key\]"):
        isolated(allow=key)  # type: ignore[arg-type]


def test_isolate_calls_and_returns(
    two: tuple[AssociatedRegion[ctypes.c_int], AssociatedRegion[ctypes.c_int]],
) -> None:
    a1, _ = two
    assert isolate(perms_at, a1.region.address) == "---p"
    assert perms_at(a1.region.address) == "rw-p"


def test_native_code_under_isolation_dies_and_is_named(faultprobe_path: str) -> None:
    child = run_case(
        "tests.unit.children.h_isolation",
        "case_native_code_under_isolation_dies_and_is_named",
        env={"FAULTPROBE": faultprobe_path},
        fault_handler=False,
    )
    assert child.returncode == -signal.SIGSEGV, child
    assert child.stdout.strip() == "outside 77"
    assert re.search(r"protection fault: read at 0x[0-9a-f]+ \(SEGV_ACCERR", child.stderr)
    assert "region: 'session-key (c_int)'" in child.stderr
