"""The argument checkers every public entry point shares.

Each takes the raw argument and returns the value to use from then on: an exact ``int`` or
``str`` (a subclass's methods never run later), or the enum member itself.  Each raises the
error class its caller passes (or documents), with the caller's own message: a checker owns the
rule, the entry point owns what the user reads.
"""

from __future__ import annotations

import operator
from typing import TypeGuard

from ._errors import ArgumentTypeError, ArgumentValueError, RegionTypeError
from ._permissions import AccessPermissions, PkeyPermissions

__all__ = [
    "MAX_NAME_LENGTH",
    "check_access",
    "check_name",
    "check_rights",
    "exact_int",
    "is_int",
]


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int and not a bool (``True`` is no size, offset or count)."""
    return not isinstance(value, bool) and isinstance(value, int)


def exact_int(value: object, error: type[Exception], message: str) -> int:
    """``value`` as an exact ``int``; ``error(message.format(value))`` unless it is an int
    (bools refused).  ``message`` is formatted only on failure, with ``{!r}`` for the value.

    ``operator.index`` of an int subclass copies its value without calling its
    ``__index__``: nothing of the caller's class runs, now or later."""
    if is_int(value):
        return operator.index(value)
    raise error(message.format(value))


def check_rights(rights: object) -> PkeyPermissions:
    """A key's rights: a :class:`PkeyPermissions` member, exactly."""
    if type(rights) is not PkeyPermissions:
        raise ArgumentTypeError(f"rights must be a PkeyPermissions member, not {rights!r}")
    return rights


def check_access(access: object) -> AccessPermissions:
    """A region's page rights: an :class:`AccessPermissions` member, exactly."""
    if type(access) is not AccessPermissions:
        raise RegionTypeError(f"access must be an AccessPermissions member, not {access!r}")
    return access


#: The longest name a key, region or secret may have (in characters).
MAX_NAME_LENGTH = 256


def check_name(name: object, error: type[Exception] = ArgumentTypeError) -> str | None:
    """The one rule for every ``name=`` of the public constructors (PkeyGuard, RegionGuard,
    Secret and its ``from_*``): None, or a ``str`` of at most :data:`MAX_NAME_LENGTH`
    printable characters (``str.isprintable``: no NUL or other control character, no lone
    surrogate, no format character such as a bidi override), since names go into reprs,
    the core's C label and fault reports written to a terminal.

    Returns an exact ``str`` copy: a subclass's methods (``__str__``, ``__eq__``,
    ``__hash__``, ``__len__``) never run, now or later.  A wrong type raises ``error`` (an
    :class:`ArgumentTypeError`); a refused value :class:`ArgumentValueError`.
    """
    if name is None:
        return None
    # The real type first: isinstance() alone would ask a lying __class__ property.
    if not (issubclass(type(name), str) and isinstance(name, str)):
        raise error(f"name must be a str or None, not {type(name).__name__}")
    text = str.__str__(name)  # an exact copy: no method of name runs
    if len(text) > MAX_NAME_LENGTH:
        raise ArgumentValueError(
            f"name must be at most {MAX_NAME_LENGTH} characters, got {len(text)}"
        )
    if not text.isprintable():
        at, bad = next((i, c) for i, c in enumerate(text) if not c.isprintable())
        raise ArgumentValueError(
            f"name must be printable text: character {at} is {bad!a} "
            f"(U+{ord(bad):04X}, not printable)"
        )
    return text
