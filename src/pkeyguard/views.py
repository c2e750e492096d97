"""Views: access to a region's value, valid only inside the guard that gave them.

Every view checks, in C, that its guard is still active, that it is the same activation,
and that the caller is the thread that holds it; otherwise :class:`ViewError`.  Byte and
composite views export the buffer protocol (zero-copy for ``hashlib``, ``bytes(view)``,
``memoryview(view)``); the guard counts those exports and complains if one outlives it.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _core

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


class ScalarRef(_core.View, Generic[V]):
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


class BytesRef(_core.View):
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


class _Guarded:
    """Proxy over a ctypes object in a region: each access asks the view first."""

    __slots__ = ("_pg_obj", "_pg_view")

    def __init__(self, view: _core.View, obj: Any) -> None:
        object.__setattr__(self, "_pg_view", view)
        object.__setattr__(self, "_pg_obj", obj)

    def __getattr__(self, name: str) -> Any:
        self._pg_view.check(False)
        return _wrap(self._pg_view, getattr(self._pg_obj, name))

    def __setattr__(self, name: str, value: Any) -> None:
        self._pg_view.check(True)
        setattr(self._pg_obj, name, value)

    def __getitem__(self, index: Any) -> Any:
        self._pg_view.check(False)
        return _wrap(self._pg_view, self._pg_obj[index])

    def __setitem__(self, index: Any, value: Any) -> None:
        self._pg_view.check(True)
        self._pg_obj[index] = value

    def __len__(self) -> int:
        return len(self._pg_obj)

    def __repr__(self) -> str:
        return f"<guarded {type(self._pg_obj).__name__}>"


def _wrap(view: _core.View, value: Any) -> Any:
    # Nested structures and arrays are ctypes objects over region memory: guard them too.
    if isinstance(value, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        return _Guarded(view, value)
    return value


_COMPOSITE_BYTES = (
    "a composite view has no {what}: the C view underneath counts in bytes, so on a Structure "
    "or an array it would reach a byte, not a field or an element. Use view.contents.field, "
    "view.contents[i], or view.tobytes() for the raw bytes"
)


class CompositeRef(_core.View, Generic[S]):
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
        """The value, field by field; each access is checked against the guard."""
        self.check(False)
        guard: Any = self.guard
        obj = guard.owner.region._ctype_obj
        proxy: S = _Guarded(self, obj)  # type: ignore[assignment]
        return proxy


class MutCompositeRef(CompositeRef[S]):
    """Write view of a Structure/Union/array region: fields can be assigned."""

    __slots__ = ()
