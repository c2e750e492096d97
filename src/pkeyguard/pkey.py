"""PkeyGuard (a protection key), AssociatedRegion and the rights guards.

The state that must stay consistent (which region is tagged with which key, which guards are
active where) lives in the C core, in one object each: a :class:`PkeyGuard` is the core's key,
a :class:`RegionGuard` its memory, an :class:`AssociatedRegion` the link between them.  Every
change to that state is one C call that checks and changes together.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Generic, Literal, Never, TypeVar, overload

from . import _backend, _core
from ._checks import check_name, check_rights
from ._errors import AccessError, ArgumentTypeError, KeyStateError, RegionError, RegionTypeError
from ._owned import Unshareable
from ._permissions import LEVEL_TO_PERMISSION, PkeyPermissions
from .region import RegionGuard
from .views import (
    BytesRef,
    CompositeRef,
    MutBytesRef,
    MutCompositeRef,
    MutScalarRef,
    ScalarRef,
)

__all__ = [
    "AccessGuard",
    "AssociatedRegion",
    "NoAccessGuard",
    "PkeyGuard",
    "ReadGuard",
    "WriteGuard",
]

# The region's value type (RegionGuard's bound: a ctypes type, or bytes for a byte region).
T = TypeVar(
    "T",
    bound="ctypes._SimpleCData[Any] | ctypes.Structure | ctypes.Union | ctypes.Array[Any] | bytes",
)
# Guards only hand the region's type out, so they can be covariant in it: that lets a
# ReadGuard[c_uint32] match the ReadGuard[_SimpleCData[V]] overloads below.
T_co = TypeVar("T_co", covariant=True)
V = TypeVar("V")
C = TypeVar("C", bound="ctypes.Structure | ctypes.Union | ctypes.Array[Any]")


class PkeyGuard(_core.Key, Unshareable):
    """A protection key with initial rights ``rights`` for the calling thread.

    Keys are logical: :attr:`key` is a number unique in the process.  On the ``pku``
    backend a key holds one of the 15 hardware keys while it is used
    (:attr:`hardware_key`); when another key needs one and none is free, the least recently
    used key without an open guard gives its up and is *parked* (its pages closed to every
    thread) until its next guard.  A key created with rights other than NoAccess holds its
    hardware key for life.  On ``mprotect`` no hardware key is involved.  Closing
    (explicitly, by ``with``, or when the key and its associations are collected) first
    re-tags every associated region to key 0, so a later key with the same number can never
    reach them, then frees the key.  Closing is refused while a guard on the key is active on
    any thread.
    """

    __slots__ = ("_name",)
    _cannot_pickle = "a PkeyGuard cannot be pickled: protection keys belong to one process"
    _cannot_copy = "a PkeyGuard cannot be copied: it owns its key exclusively"

    _name: str | None

    if not TYPE_CHECKING:  # the checkers read __init__

        def __new__(cls, rights=PkeyPermissions.NoAccess, *, name=None):
            return _new_key(cls, rights, name)

    def __init__(
        self, rights: PkeyPermissions = PkeyPermissions.NoAccess, *, name: str | None = None
    ) -> None:
        pass  # everything happens in __new__

    @property
    def name(self) -> str | None:
        return getattr(self, "_name", None)

    @property
    def rights(self) -> PkeyPermissions:
        """The initial rights the key was created with."""
        return LEVEL_TO_PERMISSION[self._base_level]

    @property
    def backend(self) -> str:
        return _backend.active()[1].name

    @property
    def regions(self) -> tuple[AssociatedRegion[Any], ...]:
        """The associations of this key that are still live."""
        bindings: tuple[AssociatedRegion[Any], ...] = self._bindings
        return bindings

    def current_rights(self) -> PkeyPermissions:
        """The rights this thread has through the key now (process-wide on mprotect)."""
        self._check_open()
        return LEVEL_TO_PERMISSION[self._thread_level()]

    def _check_open(self) -> None:
        if self.closed:
            raise KeyStateError(f"{self!r} is closed")

    def associate(self, region: RegionGuard[T]) -> AssociatedRegion[T]:
        """Tag the region's pages with this key (``pkey_mprotect``) and return the association.

        From here, access to the region needs the key's rights too.  A region has at most
        one key; associating it again, with this key or another, raises RegionError.
        """
        if type(region) is not RegionGuard:
            raise RegionTypeError(f"associate() takes a RegionGuard, not {region!r}")
        assoc: AssociatedRegion[T] = self._bind(region, AssociatedRegion)
        return assoc

    def disassociate(self, region: RegionGuard[T] | AssociatedRegion[T]) -> RegionGuard[T]:
        """Re-tag the region to key 0 and return it."""
        if type(region) is AssociatedRegion:
            assoc: AssociatedRegion[T] | None = region
        elif type(region) is RegionGuard:
            assoc = region.association
        else:
            raise RegionTypeError(
                f"disassociate() takes a RegionGuard or an AssociatedRegion, not {region!r}"
            )
        if assoc is not None and assoc.associated and _key_of(assoc) is None:
            return assoc.disassociate()  # a Secret's (its key is hidden): refused, saying so
        if assoc is None or _key_of(assoc) is not self:
            raise RegionError(f"{region!r} is not associated with {self!r}")
        return assoc.disassociate()

    def close(self) -> None:
        """Untag every region still associated, then free the key. Idempotent.

        Refused (KeyStateError, nothing changed) while a guard on the key is active.
        """
        self._close()

    def __enter__(self) -> PkeyGuard:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = getattr(self, "_name", None)
        label = f" {name!r}" if name else ""
        state = "closed" if self.closed else f"{len(self._bindings)} region(s)"
        backend = _backend.active()[1].name
        hw = self.hardware_key
        held = (
            ""
            if self.closed or self._mode not in (_core.MODE_PKU, _core.MODE_SIM)
            else (f" hardware={hw}" if hw is not None else " parked")
        )
        return f"<PkeyGuard{label} key={self.key}{held} {self.rights.name} {backend} {state}>"


def _key_of(assoc: AssociatedRegion[Any]) -> PkeyGuard | None:
    """The association's key; None once it has ended, or for a Secret's (not exposed)."""
    try:
        key: PkeyGuard | None = assoc._key
    except AttributeError:
        return None
    return key


def _new_key(cls: type[PkeyGuard], rights: object, name: object) -> PkeyGuard:
    """PkeyGuard(...): check the arguments, then allocate the key in one step."""
    rights = check_rights(rights)
    name = check_name(name, ArgumentTypeError)
    self = _backend.active()[1].new_key(cls, rights)
    self._name = name  # if interrupted before this, the key is dropped and freed
    return self


class AssociatedRegion(_core.Binding, Unshareable, Generic[T]):
    """A region tagged with a key: the only place rights guards come from.

    Made by :meth:`PkeyGuard.associate` only.
    """

    __slots__ = ()
    _cannot_pickle = "an AssociatedRegion cannot be pickled: it links a key and memory"
    _cannot_copy = "an AssociatedRegion cannot be copied: a region has one association"

    @property
    def key(self) -> PkeyGuard:
        key: PkeyGuard | None = self._key
        if key is None:
            raise RegionError(f"{self._mapping!r} is no longer associated with a key")
        return key

    @property
    def region(self) -> RegionGuard[T]:
        region: RegionGuard[T] = self._mapping
        return region

    def current_rights(self) -> PkeyPermissions:
        """This thread's rights through the key (process-wide on mprotect)."""
        return self.key.current_rights()

    if TYPE_CHECKING:

        @overload
        def set_access_rights(
            self, rights: Literal[PkeyPermissions.ReadWrite]
        ) -> WriteGuard[T]: ...
        @overload
        def set_access_rights(self, rights: Literal[PkeyPermissions.ReadOnly]) -> ReadGuard[T]: ...
        @overload
        def set_access_rights(
            self, rights: Literal[PkeyPermissions.NoAccess]
        ) -> NoAccessGuard[T]: ...
        # Rights known only at run time: narrow the rights first (``if rights is
        # PkeyPermissions.ReadWrite:`` or ``match``) to get a WriteGuard/ReadGuard; narrowing
        # the guard with ``isinstance`` works too, but mypy then forgets the value type (Any).
        @overload
        def set_access_rights(self, rights: PkeyPermissions) -> AccessGuard[T]: ...
        def set_access_rights(self, rights: PkeyPermissions) -> AccessGuard[T]:
            """A new guard that, inside ``with``, gives this thread ``rights`` to the memory."""
            ...

    def disassociate(self) -> RegionGuard[T]:
        """Untag the region (back to key 0, its own page rights) and return it.

        Refused (RegionError, nothing changed) while a guard of this association is active.
        """
        self._unbind()
        return self.region

    def __repr__(self) -> str:
        try:
            key = self._key
        except AttributeError:  # a Secret's: its key is not exposed
            return f"<AssociatedRegion {self._mapping!r} key=(a Secret's)>"
        where = f"key={key.key}" if key is not None else "disassociated"
        return f"<AssociatedRegion {self._mapping!r} {where}>"


class AccessGuard(_core.Guard, Unshareable, Generic[T_co]):
    """Base of the rights guards; use ``with``.  The concrete class says what it grants."""

    __slots__ = ()
    _cannot_pickle = "a guard cannot be pickled: it switches this thread's rights"
    _cannot_copy = "a guard cannot be copied: make another with set_access_rights()"

    @property
    def rights(self) -> PkeyPermissions:
        return LEVEL_TO_PERMISSION[self.level]

    @property
    def region(self) -> RegionGuard[Any]:
        binding: AssociatedRegion[Any] | None = self._binding
        if binding is None:
            raise AttributeError(
                "a Secret's region is not exposed: read it through the guard's view"
            )
        return binding.region

    if not TYPE_CHECKING:
        # Run-time mirror of the static rule: a guard without the method says why.
        def __getattr__(self, name: str) -> Any:
            if name in ("ref_guard", "mut_ref_guard"):
                need = "ReadOnly or ReadWrite" if name == "ref_guard" else "ReadWrite"
                raise AccessError(
                    f"{name}() needs a {need} guard; this one grants {self.rights.name}. Use "
                    f"set_access_rights(PkeyPermissions.{need.split()[-1]})"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _view(self, writable: bool) -> Any:
        # Clear messages first; the C call repeats the checks that hold.
        binding: AssociatedRegion[Any] | None = self._binding
        if binding is None:  # a Secret's guard: its region is not exposed, the core checks
            return self._new_view(writable)
        region = binding.region
        if region.closed:
            raise RegionError(f"{region!r} is closed")
        if not binding.associated:
            raise RegionError(
                f"{region!r} is no longer associated with key {self.key.key}: this guard "
                "belongs to an association that has ended; associate the region again and "
                "use the new association's set_access_rights()"
            )
        access = region.access
        if region._inherited:  # a fork closed secure pages here: the core says why
            return self._new_view(writable)
        if not access.readable or (writable and not access.writable):
            raise AccessError(
                f"the region's page rights are {access.name}: "
                f"{'writing' if writable else 'reading'} it would fault whatever the key "
                "allows; change them with region.protect()"
            )
        return self._new_view(writable)


class NoAccessGuard(AccessGuard[T_co]):
    """Grants nothing: inside it, this thread cannot touch the key's memory."""

    __slots__ = ()


class ReadGuard(AccessGuard[T_co]):
    """Grants reading: :meth:`ref_guard`."""

    __slots__ = ()

    # The first overload matches only a guard whose value type is Any (from
    # ``AssociatedRegion[Any]``, say): without it the checkers would pick the next one and
    # call every such view a BytesRef.  Any in, Any out.
    @overload
    def ref_guard(self: ReadGuard[Never]) -> Any: ...
    @overload
    def ref_guard(self: ReadGuard[bytes]) -> BytesRef: ...
    @overload
    def ref_guard(self: ReadGuard[ctypes._SimpleCData[V]]) -> ScalarRef[V]: ...
    @overload
    def ref_guard(self: ReadGuard[C]) -> CompositeRef[C]: ...
    def ref_guard(self) -> Any:
        """A read view of the value, valid until this guard exits."""
        return self._view(False)


class WriteGuard(ReadGuard[T_co]):
    """Grants reading and writing: :meth:`ref_guard` and :meth:`mut_ref_guard`."""

    __slots__ = ()

    @overload
    def mut_ref_guard(self: WriteGuard[Never]) -> Any: ...
    @overload
    def mut_ref_guard(self: WriteGuard[bytes]) -> MutBytesRef: ...
    @overload
    def mut_ref_guard(self: WriteGuard[ctypes._SimpleCData[V]]) -> MutScalarRef[V]: ...
    @overload
    def mut_ref_guard(self: WriteGuard[C]) -> MutCompositeRef[C]: ...
    def mut_ref_guard(self) -> Any:
        """A write view of the value, valid until this guard exits."""
        return self._view(True)


# The core makes guards of these classes in set_access_rights(), by rights.
_core._register_rights(
    (PkeyPermissions.NoAccess, PkeyPermissions.ReadOnly, PkeyPermissions.ReadWrite),
    (NoAccessGuard, ReadGuard, WriteGuard),
)
# set_access_rights() as AssociatedRegion's own C method: CPython specialises a C method call
# only when type(self) is exactly the method's class (see _bindings.c).
_core._register_association(AssociatedRegion)
