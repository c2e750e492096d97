"""Where region memory comes from.

An allocator hands out page-aligned, page-rounded anonymous memory and takes it back.
:class:`Mmap` is the default; more (a secure allocator with guard pages) plug in through
the same interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from . import _core
from ._permissions import AccessPermissions

__all__ = ["PAGE_SIZE", "Allocation", "Allocator", "Mmap", "round_to_pages"]

PAGE_SIZE: int = _core.PAGE_SIZE


def round_to_pages(size: int) -> int:
    """``size`` rounded up to a whole number of pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@dataclass(frozen=True)
class Allocation:
    """A block of pages: ``address`` and ``length`` are what a key tags and guards switch."""

    address: int
    length: int


class Allocator(abc.ABC):
    """Interface for region memory."""

    @abc.abstractmethod
    def allocate(self, size: int, access: AccessPermissions) -> Allocation:
        """Map at least ``size`` bytes, page-aligned, with page rights ``access``."""

    @abc.abstractmethod
    def release(self, allocation: Allocation) -> None:
        """Give the pages back; called exactly once per allocation."""


class Mmap(Allocator):
    """Private anonymous ``mmap``: zero-filled pages, unmapped with ``munmap``."""

    def allocate(self, size: int, access: AccessPermissions) -> Allocation:
        length = round_to_pages(size)
        address = _core.mmap_anon(length, int(access))
        return Allocation(address, length)

    def release(self, allocation: Allocation) -> None:
        _core.munmap(allocation.address, allocation.length)

    def __repr__(self) -> str:
        return "allocator.Mmap()"
