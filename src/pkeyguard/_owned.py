"""Bases for objects that own something of this process."""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn


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
        if cls.__module__ != "pkeyguard" and not cls.__module__.startswith("pkeyguard."):
            base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("pkeyguard"))
            raise TypeError(
                f"{base.__name__} cannot be subclassed: it guards memory or keys of this "
                "process, and its checks must hold as written (wrap it instead)"
            )

    def __reduce__(self) -> NoReturn:
        raise TypeError(self._cannot_pickle)

    def __copy__(self) -> NoReturn:
        raise TypeError(self._cannot_copy)

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(self._cannot_copy)
