"""RegionGuard: page-aligned memory that holds one typed value."""

from __future__ import annotations

import ctypes
import weakref
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from . import _core
from ._errors import RegionError, RegionTypeError
from ._owned import Unshareable
from ._permissions import AccessPermissions
from .allocator import Allocation, Allocator, Mmap

if TYPE_CHECKING:
    from .pkey import AssociatedRegion

__all__ = ["MAX_REGION_SIZE", "RegionGuard"]

# What a region can hold, as its type parameter: a ctypes scalar, Structure, Union or array
# type, or ``bytes`` for a plain byte region (``RegionGuard(64)`` is a ``RegionGuard[bytes]``).
# The bound makes ``RegionGuard(str)`` a type error, not only a RegionTypeError at run time.
T = TypeVar(
    "T",
    bound="ctypes._SimpleCData[Any] | ctypes.Structure | ctypes.Union | ctypes.Array[Any] | bytes",
)
# The same, less ``bytes``: what ``value_type`` may be when it is a type.
_CT = TypeVar(
    "_CT", bound="ctypes._SimpleCData[Any] | ctypes.Structure | ctypes.Union | ctypes.Array[Any]"
)

#: The largest region accepted (64 TiB): larger sizes are a bug, not a request.
MAX_REGION_SIZE = 1 << 46

# ctypes type codes a scalar view reads and writes in C (c_char_p/c_wchar_p hold pointers
# to memory outside the region, and long double has no portable C conversion: refused).
_SCALAR_CODES = frozenset("bBhHiIlLqQfd?c")

RegionKind = Literal["bytes", "scalar", "composite"]


def _classify(value_type: object) -> tuple[RegionKind, int, str]:
    """(kind, size in bytes, view format) for an accepted value type, else raise."""
    if isinstance(value_type, bool) or not isinstance(value_type, (int, type)):
        raise RegionTypeError(
            f"value_type must be a ctypes type (c_uint32, a Structure, c_uint8 * 16) or a "
            f"byte size (int), not {value_type!r}"
        )
    if isinstance(value_type, int):
        if value_type <= 0:
            raise RegionError(f"region size must be positive, got {value_type}")
        if value_type > MAX_REGION_SIZE:
            raise RegionError(
                f"region size {value_type} is larger than MAX_REGION_SIZE ({MAX_REGION_SIZE})"
            )
        return "bytes", value_type, "s"
    if issubclass(value_type, ctypes._SimpleCData):
        code = getattr(value_type, "_type_", "")
        if code not in _SCALAR_CODES:
            raise RegionTypeError(
                f"{value_type.__name__} (type code {code!r}) cannot live in a region: pointers "
                "and long double are not supported; use an integer, float, bool or char type"
            )
        return "scalar", ctypes.sizeof(value_type), code
    if issubclass(value_type, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        size = ctypes.sizeof(value_type)
        if size <= 0:
            raise RegionError(f"{value_type.__name__} has size 0: nothing to protect")
        return "composite", size, "s"
    raise RegionTypeError(
        f"value_type must be a ctypes scalar, Structure, Union or array type, or a byte size; "
        f"{value_type.__name__} is none of these"
    )


def _release(allocator: Allocator, allocation: Allocation) -> None:
    _core.fault_unregister(allocation.address)
    allocator.release(allocation)


class RegionGuard(Unshareable, Generic[T]):
    """Page-aligned anonymous memory holding one value of ``value_type``.

    ``value_type`` is a ctypes scalar (``ctypes.c_uint32``), a ``Structure``/``Union``, an
    array type (``ctypes.c_uint8 * 32``) or a plain byte size (``int``).  The memory is
    zero-filled, rounded up to whole pages, and released exactly once: by :meth:`close`,
    by leaving a ``with`` block, or by a finalizer when the object is collected.
    """

    _cannot_pickle = "a RegionGuard cannot be pickled: it owns memory of this process"
    _cannot_copy = "a RegionGuard cannot be copied: it owns its memory exclusively"

    @overload
    def __init__(
        self: RegionGuard[bytes],
        value_type: int,
        access: AccessPermissions = ...,
        *,
        allocator: Allocator | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: RegionGuard[_CT],
        value_type: type[_CT],
        access: AccessPermissions = ...,
        *,
        allocator: Allocator | None = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self,
        value_type: type[Any] | int,
        access: AccessPermissions = AccessPermissions.ReadWrite,
        *,
        allocator: Allocator | None = None,
        name: str | None = None,
    ) -> None:
        kind, size, fmt = _classify(value_type)
        if not isinstance(access, AccessPermissions):
            raise RegionTypeError(f"access must be an AccessPermissions member, not {access!r}")
        if allocator is None:
            allocator = Mmap()
        elif not isinstance(allocator, Allocator):
            raise RegionTypeError(
                f"allocator must be a pkeyguard.allocator.Allocator, not {allocator!r}"
            )
        if name is not None and not isinstance(name, str):
            raise RegionTypeError(f"name must be a str, not {name!r}")
        allocation = allocator.allocate(size, access)
        self._allocator = allocator
        self._allocation: Allocation | None = allocation
        self._finalizer = weakref.finalize(self, _release, allocator, allocation)
        self._value_type: type[T] | None = None if isinstance(value_type, int) else value_type
        self._kind: RegionKind = kind
        self._size = size
        self._fmt = fmt
        self._access = access
        self.name = name
        self._association: AssociatedRegion[T] | None = None
        self._ctype_obj: Any = None
        self._report_to_faults(-1)

    # -- properties ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._allocation is None

    def _live(self) -> Allocation:
        if self._allocation is None:
            raise RegionError(f"{self!r} is closed")
        return self._allocation

    @property
    def address(self) -> int:
        """Address of the first byte (page-aligned)."""
        return self._live().address

    @property
    def size(self) -> int:
        """Size of the value in bytes."""
        return self._size

    @property
    def mapped_size(self) -> int:
        """Bytes mapped: the size rounded up to whole pages."""
        return self._live().length

    @property
    def value_type(self) -> type[T] | None:
        """The ctypes type, or ``None`` for a byte region."""
        return self._value_type

    @property
    def access(self) -> AccessPermissions:
        """The page rights (what mprotect allows, before any key)."""
        return self._access

    @property
    def association(self) -> AssociatedRegion[T] | None:
        """The key association, if the region is tagged with a key."""
        return self._association

    def _report_to_faults(self, pkey: int) -> None:
        # The fault reporter (pkeyguard.faults) names regions from this table.
        alloc = self._live()
        what = self._value_type.__name__ if self._value_type is not None else "bytes"
        label = f"{self.name} ({what})" if self.name else what
        _core.fault_register(alloc.address, alloc.length, pkey, label)

    # -- operations ---------------------------------------------------------------------
    def protect(self, access: AccessPermissions) -> None:
        """Change the page rights with ``mprotect`` (the key tag, if any, is kept).

        Refused while a guard on the region's key is active (on any thread): a view taken
        inside it was checked against the old page rights, and would fault under new ones.
        """
        if not isinstance(access, AccessPermissions):
            raise RegionTypeError(f"access must be an AccessPermissions member, not {access!r}")
        alloc = self._live()
        assoc = self._association
        if assoc is not None:
            key = assoc.key
            with key._lock:
                key._refuse_while_active(
                    RegionError,
                    f"change the page rights of {self!r}",
                    "views taken inside them rely on the current rights; leave their 'with' "
                    "blocks first",
                )
                key._core.set_region_prot(alloc.address, int(access))
        else:
            _core.mprotect(alloc.address, alloc.length, int(access))
        self._access = access

    def close(self) -> None:
        """Unmap the memory; a second call does nothing.

        Refused while a guard on the region's key is active (on any thread).
        """
        if self._allocation is None:
            return
        assoc = self._association
        if assoc is not None:
            assoc._detach(unmapping=True)
        allocation, self._allocation = self._allocation, None
        self._ctype_obj = None
        _core.fault_unregister(allocation.address)
        self._finalizer.detach()
        self._allocator.release(allocation)

    def __enter__(self) -> RegionGuard[T]:
        self._live()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        what = self._value_type.__name__ if self._value_type is not None else f"{self._size} bytes"
        label = f" {self.name!r}" if self.name else ""
        if self._allocation is None:
            return f"<RegionGuard{label} {what} closed>"
        key = f" key={self._association.key.key}" if self._association is not None else ""
        return (
            f"<RegionGuard{label} {what} at {self._allocation.address:#x} "
            f"({self._allocation.length} bytes mapped) {self._access.name}{key}>"
        )
