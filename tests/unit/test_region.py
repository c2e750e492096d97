from __future__ import annotations

import copy
import ctypes
import gc
import pickle

import pytest

from pkeyguard import (
    AccessPermissions,
    MprotectError,
    PkeyguardError,
    RegionError,
    RegionGuard,
    RegionTypeError,
    allocator,
)
from pkeyguard.region import MAX_REGION_SIZE
from tests.support import perms_at

PAGE = allocator.PAGE_SIZE


class Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int32), ("y", ctypes.c_double))


class Empty(ctypes.Structure):
    _fields_ = ()


@pytest.mark.usefixtures("no_leaks")
class TestCreate:
    @pytest.mark.parametrize(
        ("value_type", "size"),
        [
            (ctypes.c_uint32, 4),
            (ctypes.c_double, 8),
            (Point, ctypes.sizeof(Point)),
            (ctypes.c_uint8 * 5000, 5000),
            (1, 1),
            (PAGE + 1, PAGE + 1),
        ],
    )
    def test_page_aligned_zeroed_and_mapped(self, value_type: object, size: int) -> None:
        with RegionGuard(value_type, AccessPermissions.ReadWrite) as region:  # type: ignore[call-overload]
            assert region.address % PAGE == 0
            assert region.size == size
            assert region.mapped_size == -(-size // PAGE) * PAGE
            assert perms_at(region.address) == "rw-p"
            assert ctypes.string_at(region.address, size) == bytes(size)
            address = region.address
        assert perms_at(address) == ""

    @pytest.mark.parametrize(
        ("access", "perms"),
        [
            (AccessPermissions.NoAccess, "---p"),
            (AccessPermissions.ReadOnly, "r--p"),
            (AccessPermissions.ReadWrite, "rw-p"),
            (AccessPermissions.ReadExecute, "r-xp"),
            (AccessPermissions.ReadWriteExecute, "rwxp"),
        ],
    )
    def test_page_rights_applied(self, access: AccessPermissions, perms: str) -> None:
        with RegionGuard(ctypes.c_uint64, access) as region:
            assert perms_at(region.address) == perms
            assert region.access is access

    def test_protect_changes_page_rights(self) -> None:
        with RegionGuard(64) as region:
            region.protect(AccessPermissions.ReadOnly)
            assert perms_at(region.address) == "r--p"
            region.protect(AccessPermissions.ReadWrite)
            assert perms_at(region.address) == "rw-p"
            with pytest.raises(RegionTypeError):
                region.protect(3)  # type: ignore[arg-type]
            assert perms_at(region.address) == "rw-p"


@pytest.mark.usefixtures("no_leaks")
class TestBadInput:
    @pytest.mark.parametrize(
        "value_type",
        [
            "c_uint32",
            4.0,
            True,
            None,
            object,
            int,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_longdouble,
            ctypes.POINTER(ctypes.c_int),
        ],
    )
    def test_wrong_value_type(self, value_type: object) -> None:
        with pytest.raises(RegionTypeError) as info:
            RegionGuard(value_type)  # type: ignore[call-overload]
        assert isinstance(info.value, TypeError)
        assert isinstance(info.value, PkeyguardError)

    @pytest.mark.parametrize("size", [0, -1, -(1 << 40), MAX_REGION_SIZE + 1])
    def test_bad_size(self, size: int) -> None:
        with pytest.raises(RegionError, match="size"):
            RegionGuard(size)

    def test_zero_sized_structure(self) -> None:
        with pytest.raises(RegionError, match="size 0"):
            RegionGuard(Empty)

    def test_absurd_size_fails_cleanly(self) -> None:
        # Within MAX_REGION_SIZE but far beyond memory: mmap refuses, nothing is left behind.
        with pytest.raises(MprotectError) as info:
            RegionGuard(MAX_REGION_SIZE)
        assert info.value.errno is not None
        assert "mmap" in str(info.value)

    def test_bad_access_and_allocator_and_name(self) -> None:
        with pytest.raises(RegionTypeError, match="AccessPermissions"):
            RegionGuard(8, 3)  # type: ignore[call-overload]
        with pytest.raises(RegionTypeError, match="Allocator"):
            RegionGuard(8, allocator=object())  # type: ignore[call-overload]
        with pytest.raises(RegionTypeError, match="name"):
            RegionGuard(8, name=5)  # type: ignore[call-overload]


@pytest.mark.usefixtures("no_leaks")
class TestLifecycle:
    def test_close_twice_and_use_after_close(self) -> None:
        region = RegionGuard(ctypes.c_uint32)
        address = region.address
        region.close()
        region.close()
        assert region.closed
        assert perms_at(address) == ""
        with pytest.raises(RegionError, match="closed"):
            _ = region.address
        with pytest.raises(RegionError, match="closed"):
            region.protect(AccessPermissions.ReadOnly)
        with pytest.raises(RegionError, match="closed"), region:
            pass
        assert "closed" in repr(region)

    def test_finalizer_releases_memory(self) -> None:
        region = RegionGuard(ctypes.c_uint32)
        address = region.address
        del region
        gc.collect()
        assert perms_at(address) == ""

    def test_not_copyable_or_picklable(self) -> None:
        with RegionGuard(ctypes.c_uint32) as region:
            with pytest.raises(TypeError, match="pickled"):
                pickle.dumps(region)
            with pytest.raises(TypeError, match="copied"):
                copy.copy(region)
            with pytest.raises(TypeError, match="copied"):
                copy.deepcopy(region)

    def test_repr_names_type_and_rights(self) -> None:
        with RegionGuard(Point, name="config") as region:
            text = repr(region)
            assert "'config'" in text and "Point" in text and "ReadWrite" in text

    def test_allocators_are_the_librarys_own(self) -> None:
        # The library maps, owns and releases the memory it protects: no allocator of the
        # user's can hand it an address (the heap, another mapping) or skip the release.
        for base in (allocator.Allocator, allocator.Mmap, allocator.Secure):
            with pytest.raises(TypeError, match="cannot be subclassed"):
                type("Mine", (base,), {"__module__": "user"})
            with pytest.raises(TypeError, match="cannot be subclassed"):  # a claimed module
                type("Mine", (base,), {"__module__": "pkeyguard.mine"})
        region = RegionGuard(16, allocator=allocator.Mmap())
        region.close()
        region.close()
        assert region.closed
