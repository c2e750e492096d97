"""PkeyGuard (a protection key), AssociatedRegion and the rights guards."""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic, Literal, Never, TypeVar, overload

from . import _backend, _core
from ._errors import AccessError, PkeyGuardError, RegionError, RegionTypeError
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


# Every open PkeyGuard of the process, for pkeyguard.isolated().
_LIVE_KEYS: weakref.WeakSet[PkeyGuard] = weakref.WeakSet()


def live_keys() -> list[PkeyGuard]:
    """The PkeyGuards of this process that are still open."""
    return [k for k in list(_LIVE_KEYS) if not k.closed]


def _release_key(backend: _backend.Backend, key: _core.Key) -> None:
    """Free a key exactly once, after untagging any pages still tagged with it."""
    if key.closed:
        return
    key.close()  # refuses (raises) while guards are active: nothing is freed then
    _free_closed_key(backend, key)


def _free_closed_key(backend: _backend.Backend, key: _core.Key) -> None:
    # A closed key can no longer be entered (the C core refuses), so nothing races this.
    for address, length, prot in key.regions:
        backend.untag(key, address, length, prot, unmapping=False)
    backend.free_key(key)


class PkeyGuard(Unshareable):
    """A protection key with initial rights ``rights`` for the calling thread.

    On the ``pku`` backend this is ``pkey_alloc``; on ``mprotect`` a logical key.  Closing
    (explicitly, by ``with``, or by the finalizer) first re-tags every associated region to
    key 0, so a later key with the same number can never reach them, then frees the key.
    Closing is refused while a guard on the key is active on any thread.
    """

    _cannot_pickle = "a PkeyGuard cannot be pickled: protection keys belong to one process"
    _cannot_copy = "a PkeyGuard cannot be copied: it owns its key exclusively"

    def __init__(
        self, rights: PkeyPermissions = PkeyPermissions.NoAccess, *, name: str | None = None
    ) -> None:
        if not isinstance(rights, PkeyPermissions):
            raise PkeyGuardError(f"rights must be a PkeyPermissions member, not {rights!r}")
        if name is not None and not isinstance(name, str):
            raise PkeyGuardError(f"name must be a str, not {name!r}")
        info, backend = _backend.active()
        self._backend = backend
        self._info = info
        self._core = backend.alloc_key(rights)
        self._rights = rights
        self.name = name
        self._lock = threading.Lock()
        self._assocs: dict[int, AssociatedRegion[Any]] = {}
        self._finalizer = weakref.finalize(self, _release_key, backend, self._core)
        _LIVE_KEYS.add(self)

    @property
    def key(self) -> int:
        """The hardware key number (pku) or the logical key number (mprotect)."""
        return self._core.pkey

    @property
    def rights(self) -> PkeyPermissions:
        """The initial rights the key was created with."""
        return self._rights

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def regions(self) -> tuple[AssociatedRegion[Any], ...]:
        return tuple(self._assocs.values())

    @property
    def active_guards(self) -> int:
        """Guards on this key active right now, on all threads."""
        return self._core.active

    def current_rights(self) -> PkeyPermissions:
        """The rights this thread has through the key now (process-wide on mprotect)."""
        self._check_open()
        return self._backend.current_rights(self._core)

    def _check_open(self) -> None:
        if self._core.closed:
            raise PkeyGuardError(f"{self!r} is closed")

    def associate(self, region: RegionGuard[T]) -> AssociatedRegion[T]:
        """Tag the region's pages with this key (``pkey_mprotect``) and return the association.

        From here, access to the region needs the key's rights too.  A region has at most
        one key; associating it again, with this key or another, raises RegionError.
        """
        if not isinstance(region, RegionGuard):
            raise RegionTypeError(f"associate() takes a RegionGuard, not {region!r}")
        with self._lock:
            self._check_open()
            if region.closed:
                raise RegionError(f"cannot associate {region!r}: it is closed")
            if region.association is not None:
                other = region.association.key
                which = "this key" if other is self else f"key {other.key}"
                raise RegionError(
                    f"{region!r} is already associated with {which}; disassociate() it first"
                )
            self._backend.tag(self._core, region.address, region.mapped_size, int(region.access))
            assoc: AssociatedRegion[T] = AssociatedRegion(self, region)
            self._assocs[id(region)] = assoc
            region._association = assoc
            region._report_to_faults(self._core.pkey)
            return assoc

    def disassociate(self, region: RegionGuard[T] | AssociatedRegion[T]) -> RegionGuard[T]:
        """Re-tag the region to key 0 and return it."""
        assoc = region if isinstance(region, AssociatedRegion) else region.association
        if assoc is None or assoc.key is not self:
            raise RegionError(f"{region!r} is not associated with {self!r}")
        return assoc.disassociate()

    def close(self) -> None:
        """Untag every region still associated, then free the key. Idempotent."""
        with self._lock:
            if self._core.closed:
                return
            self._refuse_while_active(PkeyGuardError, f"close {self!r}")
            # The C close repeats that check where no guard can slip in (GuardStateError
            # if one did, with nothing changed) and bars every later entry.
            self._core.close()
            self._finalizer.detach()
            for assoc in list(self._assocs.values()):
                assoc._forget()
            self._assocs.clear()
            _free_closed_key(self._backend, self._core)

    def _refuse_while_active(
        self,
        error: type[Exception],
        action: str,
        why: str = "leave their 'with' blocks first",
    ) -> None:
        """Raise ``error`` if a guard on this key is active on any thread.

        This check gives the clear message; the C core repeats it inside the call that makes
        the change (Key.close, remove_region, set_region_prot), where no guard can be entered
        in between, so a guard entered by another thread just after this check still stops
        the change.
        """
        if self._core.active:
            raise error(
                f"cannot {action}: {self._core.active} guard(s) on key {self.key} are still "
                f"active; {why}"
            )

    def __enter__(self) -> PkeyGuard:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        state = "closed" if self._core.closed else f"{len(self._assocs)} region(s)"
        return f"<PkeyGuard{label} key={self.key} {self._rights.name} {self._backend.name} {state}>"


class AssociatedRegion(Generic[T]):
    """A region tagged with a key: the only place rights guards come from."""

    def __init__(self, key: PkeyGuard, region: RegionGuard[T]) -> None:
        self._key: PkeyGuard | None = key
        self._region = region
        self._guards: dict[PkeyPermissions, AccessGuard[T]] = {}

    @property
    def key(self) -> PkeyGuard:
        if self._key is None:
            raise RegionError(f"{self._region!r} is no longer associated with a key")
        return self._key

    @property
    def region(self) -> RegionGuard[T]:
        return self._region

    @property
    def associated(self) -> bool:
        return self._key is not None

    def _core_key(self) -> _core.Key:
        return self.key._core

    def current_rights(self) -> PkeyPermissions:
        """This thread's rights through the key (process-wide on mprotect)."""
        return self.key.current_rights()

    @overload
    def set_access_rights(self, rights: Literal[PkeyPermissions.ReadWrite]) -> WriteGuard[T]: ...
    @overload
    def set_access_rights(self, rights: Literal[PkeyPermissions.ReadOnly]) -> ReadGuard[T]: ...
    @overload
    def set_access_rights(self, rights: Literal[PkeyPermissions.NoAccess]) -> NoAccessGuard[T]: ...
    # Rights known only at run time: narrow the rights first (``if rights is
    # PkeyPermissions.ReadWrite:`` or ``match``) to get a WriteGuard/ReadGuard; narrowing the
    # guard with ``isinstance`` works too, but mypy then forgets the value type (Any).
    @overload
    def set_access_rights(self, rights: PkeyPermissions) -> AccessGuard[T]: ...
    def set_access_rights(self, rights: PkeyPermissions) -> AccessGuard[T]:
        """A guard that, inside ``with``, gives this thread ``rights`` to the key's memory.

        Entering writes PKRU (pku) or re-protects the key's regions (mprotect); leaving
        restores exactly what entering changed.  Guards nest (LIFO) and are bound to the
        thread that entered them.  The returned guard may be reused once it has exited.
        """
        # Fast path: a cached guard that is not in use (the cache is emptied when the region
        # leaves the key or the key closes, so a hit implies both are still valid).
        guard = self._guards.get(rights)
        if guard is not None and not guard.active:
            return guard
        if not isinstance(rights, PkeyPermissions):
            raise PkeyGuardError(f"rights must be a PkeyPermissions member, not {rights!r}")
        key = self.key
        key._check_open()
        guard = _GUARD_CLASSES[rights](key._core, rights.level, self)
        if rights not in self._guards or not self._guards[rights].active:
            self._guards[rights] = guard
        return guard

    def disassociate(self) -> RegionGuard[T]:
        """Untag the region (back to key 0, its own page rights) and return it."""
        self._detach(unmapping=False)
        return self._region

    def _detach(self, *, unmapping: bool) -> None:
        key = self.key
        with key._lock:
            key._refuse_while_active(RegionError, f"detach {self._region!r} from key {key.key}")
            if not key._core.closed:
                region = self._region
                key._backend.untag(
                    key._core,
                    region.address,
                    region.mapped_size,
                    int(region.access),
                    unmapping=unmapping,
                )
            key._assocs.pop(id(self._region), None)
            self._forget()

    def _forget(self) -> None:
        self._key = None
        self._guards.clear()
        self._region._association = None
        if not self._region.closed:
            self._region._report_to_faults(-1)

    def __repr__(self) -> str:
        key = f"key={self._key.key}" if self._key is not None else "disassociated"
        return f"<AssociatedRegion {self._region!r} {key}>"


class AccessGuard(_core.Guard, Generic[T_co]):
    """Base of the rights guards; use ``with``.  The concrete class says what it grants."""

    __slots__ = ()

    @property
    def rights(self) -> PkeyPermissions:
        return LEVEL_TO_PERMISSION[self.level]

    @property
    def region(self) -> RegionGuard[Any]:
        owner: AssociatedRegion[Any] = self.owner
        return owner.region

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
        owner: AssociatedRegion[Any] = self.owner
        region = owner.region
        if region.closed:
            raise RegionError(f"{region!r} is closed")
        if owner._key is None:
            # A guard kept from an association that has ended (disassociate(), or its key
            # closed) still switches its key's rights, but the region is no longer under
            # that key: it may be untagged, re-protected or tagged with another key, and a
            # view would fault.  Views come only from guards of a live association.
            raise RegionError(
                f"{region!r} is no longer associated with key {self.key.pkey}: this guard "
                "belongs to an association that has ended; associate the region again and "
                "use the new association's set_access_rights()"
            )
        if not region.access.readable or (writable and not region.access.writable):
            raise AccessError(
                f"the region's page rights are {region.access.name}: "
                f"{'writing' if writable else 'reading'} it would fault whatever the key "
                "allows; change them with region.protect()"
            )
        kind = region._kind
        if kind == "scalar":
            cls: type[_core.View] = MutScalarRef if writable else ScalarRef
        elif kind == "bytes":
            cls = MutBytesRef if writable else BytesRef
        else:
            if region._ctype_obj is None:
                vt: Any = region.value_type
                region._ctype_obj = vt.from_address(region.address)
            cls = MutCompositeRef if writable else CompositeRef
        return cls(self, region.address, region.size, region._fmt, writable)


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


_GUARD_CLASSES: dict[PkeyPermissions, type[AccessGuard[Any]]] = {
    PkeyPermissions.NoAccess: NoAccessGuard,
    PkeyPermissions.ReadOnly: ReadGuard,
    PkeyPermissions.ReadWrite: WriteGuard,
}
