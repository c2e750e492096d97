"""A base for objects that own something of this process: no pickling, no copying."""

from __future__ import annotations

from typing import ClassVar, NoReturn


class Unshareable:
    """Refuses ``pickle`` and ``copy``: a copy would be a second owner of the same key or
    memory, and a pickle would carry it to a process where it means nothing.

    Subclasses give the two messages.
    """

    __slots__ = ()

    _cannot_pickle: ClassVar[str]
    _cannot_copy: ClassVar[str]

    def __reduce__(self) -> NoReturn:
        raise TypeError(self._cannot_pickle)

    def __copy__(self) -> NoReturn:
        raise TypeError(self._cannot_copy)

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(self._cannot_copy)
