"""Bases for objects that own something of this process."""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

_sealed = False


def seal() -> None:
    """pkeyguard has defined its classes (the end of its ``__init__``): from now on no class
    may subclass them, whatever its ``__module__`` claims."""
    global _sealed
    _sealed = True


def refuse_outside_subclass(cls: type, message: str) -> None:
    """The one rule for the classes users must not subclass: only pkeyguard's own modules,
    and only while pkeyguard is being imported (a ``__module__`` can be set to anything)."""
    ours = cls.__module__ == "pkeyguard" or cls.__module__.startswith("pkeyguard.")
    if _sealed or not ours:
        raise TypeError(message)


class Unshareable:
    """Refuses ``pickle`` and ``copy`` (a copy would be a second owner of the same key or
    memory, and a pickle would carry it to a process where it means nothing), and subclassing
    outside pkeyguard: these classes keep invariants that a subclass could break (a
    ``__del__`` that resurrects, a method that skips a check).

    Subclasses give the two messages.
    """

    __slots__ = ()

    _cannot_pickle: ClassVar[str]
    _cannot_copy: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("pkeyguard"))
        refuse_outside_subclass(
            cls,
            f"{base.__name__} cannot be subclassed: it guards memory or keys of this "
            "process, and its checks must hold as written (wrap it instead)",
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(self._cannot_pickle)

    def __copy__(self) -> NoReturn:
        raise TypeError(self._cannot_copy)

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(self._cannot_copy)
