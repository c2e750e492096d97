"""Views: access to a region's value, valid only inside the guard that gave them.

Every view checks, in C, that its guard is still active, that it is the same activation,
and that the caller is the thread that holds it; otherwise :class:`ViewError`.  Each access
converts its arguments first (``__index__``, ``__bool__``, ``__float__``, the buffer of an
assigned value), then checks, then touches memory, with no Python code in between.  Byte and
composite views export the buffer protocol (zero-copy for ``hashlib``, ``bytes(view)``,
``memoryview(view)``); the guard counts those exports and complains if one outlives it.

Composite views never hand out ctypes objects over region memory: fields and elements are
read and written through checked copies, and nested Structures and arrays come back as
checked proxies.
"""

from __future__ import annotations

import ctypes
import operator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _core
from ._layouts import array_layout, field_span
from ._owned import Unshareable

__all__ = [
    "BytesRef",
    "CompositeRef",
    "MutBytesRef",
    "MutCompositeRef",
    "MutScalarRef",
    "ScalarRef",
]

V = TypeVar("V")
S = TypeVar("S")


class _ViewBase(_core.View, Unshareable):
    __slots__ = ()
    _cannot_pickle = "a view cannot be pickled: it is valid only inside its guard"
    _cannot_copy = "a view cannot be copied: it is valid only inside its guard"


class ScalarRef(_ViewBase, Generic[V]):
    """Read view of a scalar region: ``.value``."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def value(self) -> V: ...


class MutScalarRef(ScalarRef[V]):
    """Write view of a scalar region: ``.value`` can be assigned."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def value(self) -> V: ...
        @value.setter
        def value(self, value: V) -> None: ...


class BytesRef(_ViewBase):
    """Read view of a byte region: ``len``, indexing, slicing (copies), buffer protocol."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def value(self) -> bytes: ...
        def __getitem__(self, index: int | slice) -> Any: ...


class MutBytesRef(BytesRef):
    """Write view of a byte region: item and slice assignment, writable buffer."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def value(self) -> bytes: ...
        @value.setter
        def value(self, value: bytes | bytearray | memoryview) -> None: ...
        def __setitem__(self, index: int | slice, value: Any) -> None: ...


# --- composite values -------------------------------------------------------------------

_COMPOSITES = (ctypes.Structure, ctypes.Union, ctypes.Array)


class _Proxy:
    """A Structure, Union or array inside a region, seen through a view: each access is a
    checked copy in or out, and ctypes converts the copy."""

    __slots__ = ("_pg_base", "_pg_type", "_pg_view")

    _pg_view: _core.View
    _pg_base: int
    _pg_type: type[Any]

    def __init__(self, view: _core.View, base: int, ctype: type[Any]) -> None:
        object.__setattr__(self, "_pg_view", view)
        object.__setattr__(self, "_pg_base", base)
        object.__setattr__(self, "_pg_type", ctype)

    def _wrap(self, offset: int, value: Any) -> Any:
        # A nested Structure or array comes back as a proxy over the region, never as the
        # ctypes object over the copy (which would silently drop writes).
        if isinstance(value, _COMPOSITES):
            return _Proxy(self._pg_view, self._pg_base + offset, type(value))
        return value

    def _scratch(self, offset: int, raw: bytes) -> Any:
        """A zeroed instance of our type in ordinary memory, ``raw`` copied in at offset."""
        buf = bytearray(ctypes.sizeof(self._pg_type))
        buf[offset : offset + len(raw)] = raw
        return self._pg_type.from_buffer(buf)

    # Structures and Unions: fields.
    def __getattr__(self, name: str) -> Any:
        if type(name) is not str or not issubclass(self._pg_type, (ctypes.Structure, ctypes.Union)):
            raise AttributeError(name)
        offset, length, _ = field_span(self._pg_type, name)
        raw = self._pg_view._read(self._pg_base + offset, length)
        return self._wrap(offset, getattr(self._scratch(offset, raw), name))

    def __setattr__(self, name: str, value: Any) -> None:
        if type(name) is not str or not issubclass(self._pg_type, (ctypes.Structure, ctypes.Union)):
            raise AttributeError(name)
        offset, length, bitfield = field_span(self._pg_type, name)
        # A bitfield shares its bytes with its neighbours: start from what is there.
        raw = self._pg_view._read(self._pg_base + offset, length) if bitfield else b""
        scratch = self._scratch(offset, raw)
        setattr(scratch, name, value)  # ctypes converts the value here, on the copy
        with memoryview(scratch).cast("B") as mv:
            self._pg_view._write(self._pg_base + offset, mv[offset : offset + length])

    # Arrays: elements and slices, by the layout array_layout() checked against ctypes' own
    # record (``_type_`` and ``_length_`` are class attributes anyone can reassign).
    def _array(self) -> tuple[Any, int, int]:
        if not issubclass(self._pg_type, ctypes.Array):
            raise TypeError(f"{self._pg_type.__name__} is not an array: use its fields")
        return array_layout(self._pg_type)

    def _indices(self, index: Any, length: int) -> range | int:
        if isinstance(index, slice):
            return range(*index.indices(length))
        i = operator.index(index)
        if i < 0:
            i += length
        if not 0 <= i < length:
            raise IndexError("invalid index")
        return i

    def __getitem__(self, index: Any) -> Any:
        etype, esize, length = self._array()
        where = self._indices(index, length)  # runs __index__ before any memory is read
        if isinstance(where, int):
            raw = self._pg_view._read(self._pg_base + where * esize, esize)
            return self._wrap(where * esize, (etype * 1).from_buffer_copy(raw)[0])
        if issubclass(etype, _COMPOSITES):
            self._pg_view.check(False)
            return [_Proxy(self._pg_view, self._pg_base + i * esize, etype) for i in where]
        if where:
            lo = min(where[0], where[-1])
            span = abs(where[-1] - where[0]) + 1
            raw = self._pg_view._read(self._pg_base + lo * esize, span * esize)
            raw = b"".join(raw[(i - lo) * esize : (i - lo + 1) * esize] for i in where)
        else:
            self._pg_view.check(False)  # an empty slice of an expired view is refused too
            raw = b""
        # An array of the chosen elements, sliced whole: ctypes' own result (bytes for
        # c_char, str for c_wchar, a list otherwise).
        return (etype * len(where)).from_buffer_copy(raw)[:]

    def __setitem__(self, index: Any, value: Any) -> None:
        etype, esize, length = self._array()
        where = self._indices(index, length)
        if isinstance(where, int):
            scratch = (etype * 1)()
            scratch[0] = value  # ctypes converts here, on the copy
            self._pg_view._write(self._pg_base + where * esize, scratch)
            return
        if type(value) not in (bytes, str, list, tuple):
            # Take the items once, here: ctypes would call __len__ and __getitem__ itself and
            # replace an error they raise with its own "same size" ValueError.
            value = list(value)
        scratch = (etype * len(where))()
        scratch[:] = value  # the same length check and conversions as ctypes
        if not where:
            self._pg_view.check(True)  # nothing to write, but the view must be usable
            return
        with memoryview(scratch).cast("B") as mv:
            if where.step == 1:
                self._pg_view._write(self._pg_base + where.start * esize, mv)
            else:
                for n, i in enumerate(where):
                    self._pg_view._write(self._pg_base + i * esize, mv[n * esize : (n + 1) * esize])

    def __len__(self) -> int:
        return self._array()[2]

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]

    def __dir__(self) -> list[str]:
        names = [
            field[0]
            for klass in self._pg_type.__mro__
            for field in klass.__dict__.get("_fields_", ())
        ]
        return sorted(set(names))

    def __repr__(self) -> str:
        return f"<guarded {self._pg_type.__name__}>"

    def __reduce__(self) -> Any:
        raise TypeError("a view's contents cannot be pickled: copy them with view.tobytes()")


_COMPOSITE_BYTES = (
    "a composite view has no {what}: the C view underneath counts in bytes, so on a Structure "
    "or an array it would reach a byte, not a field or an element. Use view.contents.field, "
    "view.contents[i], or view.tobytes() for the raw bytes"
)


class CompositeRef(_ViewBase, Generic[S]):
    """Read view of a Structure/Union/array region: ``.contents`` reads the fields."""

    __slots__ = ()

    if not TYPE_CHECKING:
        # Hidden from type checkers, which already reject these; at run time they would
        # otherwise fall through to the byte-level base (v[0] = first byte of an array).
        @property
        def value(self):
            raise AttributeError(_COMPOSITE_BYTES.format(what=".value"))

        @value.setter
        def value(self, _value):
            raise AttributeError(_COMPOSITE_BYTES.format(what=".value"))

        def __getitem__(self, _index):
            raise TypeError(_COMPOSITE_BYTES.format(what="indexing"))

        def __setitem__(self, _index, _value):
            raise TypeError(_COMPOSITE_BYTES.format(what="indexing"))

    @property
    def contents(self) -> S:
        """The value, field by field; each access is a checked copy in or out."""
        self.check(False)
        proxy: S = _Proxy(self, 0, self._ctype)  # type: ignore[assignment]
        return proxy


class MutCompositeRef(CompositeRef[S]):
    """Write view of a Structure/Union/array region: fields can be assigned."""

    __slots__ = ()
