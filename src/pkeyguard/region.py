"""RegionGuard: page-aligned memory that holds one typed value."""

from __future__ import annotations

import ctypes
import functools
import operator
import struct
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from . import _core
from ._checks import MAX_NAME_LENGTH as MAX_NAME_LENGTH  # re-exported: its old home
from ._checks import check_access, check_name, is_int
from ._errors import RegionError, RegionTypeError
from ._layouts import SCALAR_CODES, pointer_in, scalar_code
from ._owned import Unshareable
from ._permissions import AccessPermissions
from .allocator import Allocator, Mmap
from .views import BytesRef, CompositeRef, MutBytesRef, MutCompositeRef, MutScalarRef, ScalarRef

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
MAX_REGION_SIZE: int = _core.MAX_REGION_SIZE

RegionKind = Literal["bytes", "scalar", "composite"]

_VIEW_TYPES: dict[RegionKind, tuple[type[_core.View], type[_core.View]]] = {
    "bytes": (BytesRef, MutBytesRef),
    "scalar": (ScalarRef, MutScalarRef),
    "composite": (CompositeRef, MutCompositeRef),
}


def _classify(value_type: object) -> tuple[RegionKind, int, str, bool]:
    """(kind, size in bytes, view format, byte-swapped) for an accepted value type."""
    if is_int(value_type):
        nbytes = operator.index(value_type)  # an exact int: subclasses cannot lie later
        if nbytes <= 0:
            raise RegionError(f"region size must be positive, got {nbytes}")
        if nbytes > MAX_REGION_SIZE:
            raise RegionError(
                f"region size {nbytes} is larger than MAX_REGION_SIZE ({MAX_REGION_SIZE})"
            )
        return "bytes", nbytes, "s", False
    if not isinstance(value_type, type):  # a bool is no byte size either
        raise RegionTypeError(
            f"value_type must be a ctypes type (c_uint32, a Structure, c_uint8 * 16) or a "
            f"byte size (int), not {value_type!r}"
        )
    vt: Any = value_type
    size: int | None = None
    pointer: str | None = None
    try:
        if issubclass(vt, ctypes._SimpleCData):
            code, swapped = scalar_code(vt)
            if code not in SCALAR_CODES or struct.calcsize(code) != ctypes.sizeof(vt):
                raise RegionTypeError(
                    f"{value_type.__name__} (type code {code!r}) cannot live in a region: "
                    "pointers and long double are not supported; use an integer, float, bool "
                    "or char type"
                )
            return "scalar", ctypes.sizeof(vt), code, swapped
        if issubclass(vt, (ctypes.Structure, ctypes.Union, ctypes.Array)):
            size = ctypes.sizeof(vt)
            pointer = pointer_in(vt, set())
    except RegionError:
        raise
    except Exception as exc:  # a type that only pretends to be a ctypes type
        raise RegionTypeError(f"{value_type!r} is not a usable ctypes type: {exc}") from None
    if size is None:
        raise RegionTypeError(
            "value_type must be a ctypes scalar, Structure, Union or array type, or a byte "
            f"size; {value_type.__name__} is none of these"
        )
    if size <= 0:
        raise RegionError(f"{value_type.__name__} has size 0: nothing to protect")
    if pointer is not None:
        raise RegionTypeError(
            f"{value_type.__name__} holds a pointer ({pointer}): regions hold plain data only, "
            "since a pointer's bytes can be rewritten through a view and reading it would "
            "follow them"
        )
    return "composite", size, "s", False


def _printable(text: str) -> str:
    """``text`` with each character that is not printable replaced by ``?`` (for labels)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


class RegionGuard(_core.Mapping, Unshareable, Generic[T]):
    """Page-aligned anonymous memory holding one value of ``value_type``.

    ``value_type`` is a ctypes scalar (``ctypes.c_uint32``), a ``Structure``/``Union``, an
    array type (``ctypes.c_uint8 * 32``) or a plain byte size (``int``).  The memory is
    zero-filled, rounded up to whole pages, and released exactly once: by :meth:`close`, by
    leaving a ``with`` block, or when the region (and any association of it) is collected.
    """

    __slots__ = ("_kind", "_name", "_value_type")
    _cannot_pickle = "a RegionGuard cannot be pickled: it owns memory of this process"
    _cannot_copy = "a RegionGuard cannot be copied: it owns its memory exclusively"

    _kind: RegionKind
    _name: str | None
    _value_type: type[T] | None

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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything happens in __new__, in one step with the mapping

    if not TYPE_CHECKING:  # the checkers read the __init__ overloads above

        def __new__(cls, *args, **kwargs):
            return _new_region(cls, *args, **kwargs)

    # -- properties ---------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return getattr(self, "_name", None)

    @property
    def value_type(self) -> type[T] | None:
        """The ctypes type, or ``None`` for a byte region."""
        return self._value_type

    @property
    def access(self) -> AccessPermissions:
        """The page rights (what mprotect allows, before any key)."""
        return AccessPermissions(self._prot)

    @property
    def association(self) -> AssociatedRegion[T] | None:
        """The key association, if the region is tagged with a key."""
        assoc: AssociatedRegion[T] | None = self._binding
        return assoc

    # -- operations ---------------------------------------------------------------------
    def protect(self, access: AccessPermissions) -> None:
        """Change the page rights with ``mprotect`` (the key tag, if any, is kept).

        Refused while a guard of the region's association is active (on any thread): a view
        taken inside it was checked against the old page rights, and would fault under new
        ones.
        """
        self._protect(int(check_access(access)))

    def __enter__(self) -> RegionGuard[T]:
        if self.closed:
            raise RegionError(f"{self!r} is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        vt = getattr(self, "_value_type", None)
        what = vt.__name__ if vt is not None else f"{self.size} bytes"
        name = getattr(self, "_name", None)
        label = f" {name!r}" if name else ""
        try:
            if self.closed:  # the core's "is closed" message calls repr(): no error here
                return f"<RegionGuard{label} {what} closed>"
            address, mapped = self.address, self.mapped_size
        except RegionError:  # closed by another thread meanwhile
            return f"<RegionGuard{label} {what} closed>"
        binding = self._binding
        try:
            key = binding._key if binding is not None else None
            tag = f" key={key.key}" if key is not None else ""
        except AttributeError:  # a Secret's region: its key is not exposed
            tag = " key=(a Secret's)"
        return (
            f"<RegionGuard{label} {what} at {address:#x} ({mapped} bytes mapped) "
            f"{AccessPermissions(self._prot).name}{tag}>"
        )


def _new_region(
    cls: type[RegionGuard[Any]],
    value_type: type[Any] | int,
    access: AccessPermissions = AccessPermissions.ReadWrite,
    *,
    allocator: Allocator | None = None,
    name: str | None = None,
) -> RegionGuard[Any]:
    """RegionGuard(...): check every argument, then map the memory in one step."""
    kind, size, fmt, swap = _classify(value_type)
    access = check_access(access)
    if allocator is None:
        allocator = Mmap()
    elif not isinstance(allocator, Allocator):
        raise RegionTypeError(
            f"allocator must be a pkeyguard.allocator.Allocator, not {allocator!r}"
        )
    name = check_name(name, RegionTypeError)
    vt = None if isinstance(value_type, int) else value_type
    what = _printable(vt.__name__) if vt is not None else "bytes"  # a class name may hold ESC
    self = allocator._map(
        functools.partial(
            _core.Mapping.__new__,
            cls,
            size,
            int(access),
            fmt=fmt,
            swap=swap,
            ctype=vt if kind == "composite" else None,
            view_types=_VIEW_TYPES[kind],
            label=f"{name} ({what})" if name else what,
        ),
        size,
    )
    # If anything interrupts us from here on, the object is dropped and its memory unmapped.
    self._kind = kind
    self._name = name
    self._value_type = vt
    return self
