"""What ctypes recorded about a type: the layouts regions and views rely on.

A ctypes type's class attributes (``_type_``, ``_length_``, ``_fields_`` and the field
descriptors) can be reassigned by anyone after the class is made; what ctypes recorded when
it made the class (the buffer format of an instance, the field descriptors' offsets and sizes)
cannot.  Regions check a value type against that record when they are made (no pointer at any
depth, a scalar code a view can convert); views read and write fields and elements by it.
"""

from __future__ import annotations

import ctypes
import re
import sys
import weakref
from _ctypes import CFuncPtr
from typing import Any

from ._errors import RegionTypeError

__all__ = [
    "POINTER_CODES",
    "SCALAR_CODES",
    "array_layout",
    "field_span",
    "pointer_in",
    "scalar_code",
    "stored_format",
]

# ctypes type codes a scalar view reads and writes in C (c_char_p/c_wchar_p hold pointers
# to memory outside the region, and long double has no portable C conversion: refused).
SCALAR_CODES = frozenset("bBhHiIlLqQfd?c")
# Type codes that hold a pointer or a Python object: never in a region, at any depth (their
# bytes can be overwritten through a byte view, and reading them dereferences them).
POINTER_CODES = frozenset("zZPOXv")


class _Dummy(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int),)


_CField: type[Any] = type(_Dummy.x)  # ctypes does not export the field descriptor type


def field_span(owner: type[Any], name: str) -> tuple[int, int, bool]:
    """(offset, length, is_bitfield) of a field of a Structure or Union type."""
    desc: Any = getattr(owner, name, None)
    if type(desc) is not _CField:
        raise AttributeError(
            f"{owner.__name__} has no field {name!r} (a composite view gives fields only; "
            f"for anything else, copy the value: {owner.__name__}.from_buffer_copy(view."
            "tobytes()))"
        )
    offset: int = desc.offset
    size: int = desc.size
    if size >> 16:  # a bitfield: (bit count << 16) | bit offset in its storage unit
        bits, shift = size >> 16, size & 0xFFFF
        return offset, (shift + bits + 7) // 8, True
    return offset, size, False


def stored_format(ctype: Any) -> str:
    """The buffer format ctypes recorded for ``ctype`` when the class was made (a zeroed
    instance's memoryview). ``_type_``, ``_length_`` and the field descriptors are class
    attributes that anyone can reassign later; this record is what ctypes itself reads and
    writes by, and it cannot be changed."""
    with memoryview(ctype.from_buffer_copy(bytes(ctypes.sizeof(ctype)))) as mv:
        return str(mv.format)


# Array type -> (element type, element size, length), believed once and then kept: the class
# objects ``_type_`` named when they were checked, whatever it is reassigned to later.
_ARRAY_LAYOUTS: weakref.WeakKeyDictionary[type[Any], tuple[type[Any], int, int]] = (
    weakref.WeakKeyDictionary()
)


def array_layout(array: Any) -> tuple[type[Any], int, int]:
    """(element type, element size, length) of a ctypes array type, as ctypes stored them.

    ``_type_`` and ``_length_`` are believed only if the array type they describe has exactly
    the stored layout (size and buffer format); otherwise the type was relabelled and is
    refused. Regions check their array types when they are made, so later relabelling finds
    the layout already kept here.
    """
    found = _ARRAY_LAYOUTS.get(array)
    if found is None:
        etype: Any = array._type_
        length: Any = array._length_
        try:
            described: Any = etype * length  # TypeError unless etype is a ctypes type
            honest = (
                type(length) is int
                and ctypes.sizeof(described) == ctypes.sizeof(array)
                and stored_format(described) == stored_format(array)
            )
        except (TypeError, ValueError, OverflowError, AttributeError):
            honest = False
        if not honest:
            raise RegionTypeError(
                f"{array.__name__}._type_ or ._length_ was reassigned: they no longer describe "
                "the array ctypes made, so its elements cannot be read safely"
            )
        found = (etype, ctypes.sizeof(etype), length)
        _ARRAY_LAYOUTS[array] = found
    return found


# Codes are read from the stored format, never from ``_type_`` (``c_char_p._type_ = "Q"``
# relabels a pointer).  Field names are stripped before looking for codes; ``_STRUCT_NAME``
# matches one.
_STRUCT_NAME = re.compile(r":[^:]*:")
_BYTE_ORDER = "<>@=!"


def scalar_code(ctype: Any) -> tuple[str, bool]:
    """(struct code, byte-swapped) of a ctypes scalar type, from ctypes' own record."""
    fmt = stored_format(ctype)
    code = fmt.lstrip(_BYTE_ORDER)
    foreign = ">" if sys.byteorder == "little" else "<"
    return code, fmt[:1] == foreign and len(code) == 1 and ctypes.sizeof(ctype) > 1


def pointer_in(value_type: Any, seen: set[type[Any]]) -> str | None:
    """The name of a pointer-like member of a ctypes type, or None if it is plain data.

    Two independent looks, both from what ctypes recorded: the type tree (scalar codes and
    array elements taken from instances, not from ``_type_``), and the codes in the whole
    type's buffer format, with field names stripped."""
    if value_type in seen:
        return None
    seen.add(value_type)
    if issubclass(value_type, (ctypes._Pointer, CFuncPtr)):
        return str(value_type.__name__)
    if issubclass(value_type, ctypes._SimpleCData):
        code, _ = scalar_code(value_type)
        return str(value_type.__name__) if set(code) & POINTER_CODES else None
    fmt = _STRUCT_NAME.sub("", stored_format(value_type))
    if set(fmt) & (POINTER_CODES | {"&"}):
        return str(value_type.__name__)
    if issubclass(value_type, ctypes.Array):
        # checked against the stored layout (a relabelled array is refused) and kept, so that
        # the region's views index it by these element types even if _type_ changes later
        return pointer_in(array_layout(value_type)[0], seen)
    for klass in value_type.__mro__:
        for field in klass.__dict__.get("_fields_", ()):
            found = pointer_in(field[1], seen)
            if found is not None:
                return f"{field[0]}: {found}"
    return None
