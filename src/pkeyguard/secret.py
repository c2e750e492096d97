"""Secret: bytes that live in secure, key-protected memory and are read in a block.

A Secret's bytes sit in a region from :class:`pkeyguard.allocator.Secure` (guard pages,
mlock, no core dump, wiped on fork, canary, zeroed on close), tagged with a key that is
NoAccess outside ``with secret.reveal() as buf:``.  ``buf`` is a read-only buffer that
``hashlib``, ``hmac`` and ``cryptography`` accept without a copy.

All Secrets share one library-owned key (x86 has only 15), freed when the last Secret is
gone: inside one secret's ``reveal()`` block the thread can read every secret.  Keep the
blocks short.
"""

from __future__ import annotations

import hmac
import operator
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._errors import (
    ArgumentTypeError,
    KeyStateError,
    PkeyguardError,
    RegionError,
    RegionTypeError,
)
from ._owned import Unshareable
from ._permissions import AccessPermissions, PkeyPermissions
from .allocator import PAGE_SIZE, Secure
from .pkey import AssociatedRegion, PkeyGuard, ReadGuard
from .region import RegionGuard, _check_name
from .views import BytesRef

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["Secret"]

BytesLike = bytes | bytearray | memoryview

# The library's key for secrets: made on first use and freed by the core when the last
# secret is gone (x86 has only 15 keys).  No lock: the first of two racing threads to store
# its key wins, and the other key is simply dropped.
_shared: dict[str, PkeyGuard] = {}


def _secrets_key() -> PkeyGuard:
    key = _shared.get("key")
    if key is None or key.closed:
        made = PkeyGuard(PkeyPermissions.NoAccess, name="pkeyguard secrets")
        made._set_autoclose()
        key = _shared.setdefault("key", made)
        if key.closed:
            _shared["key"] = key = made
    return key


def _associate(region: RegionGuard[bytes]) -> AssociatedRegion[bytes]:
    """Tag a secret's region with the library key.  The key frees itself when its last
    secret closes, possibly between our fetching it and tagging with it: then use a new one."""
    while True:
        key = _secrets_key()
        try:
            return key.associate(region)
        except KeyStateError:
            if not key.closed:
                raise


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise RegionTypeError(f"a secret needs a positive size in bytes (an int), got {size!r}")
    n = operator.index(size)  # an exact int
    if n <= 0:
        raise RegionError(f"a secret needs a positive size in bytes, got {n}")
    return n


def _wipe(buffer: object) -> None:
    """Zero a writable source buffer (bytes are immutable and cannot be wiped)."""
    if isinstance(buffer, bytearray):
        buffer[:] = bytes(len(buffer))
    elif isinstance(buffer, memoryview) and not buffer.readonly:
        with buffer.cast("B") as flat:
            flat[:] = bytes(flat.nbytes)


class Secret(Unshareable):
    """Secret bytes in protected memory; read them only inside :meth:`reveal`.

    The memory is zeroed and unmapped by :meth:`close`, or when the Secret is collected, or
    (zeroed only) at interpreter exit.
    """

    __slots__ = ("_assoc", "_region", "name")
    _cannot_pickle = "a Secret cannot be pickled"
    _cannot_copy = "a Secret cannot be copied"

    _region: RegionGuard[bytes]
    _assoc: AssociatedRegion[bytes]

    def __init__(
        self, size: int, *, name: str | None = None, allocator: Secure | None = None
    ) -> None:
        """An all-zero secret of ``size`` bytes; fill it with :meth:`write` or use a
        ``from_*`` constructor."""
        size = _check_size(size)
        name = _check_name(name, RegionTypeError)
        if allocator is None:
            allocator = Secure()
        elif type(allocator) is not Secure:
            raise ArgumentTypeError(
                f"a Secret's allocator must be allocator.Secure(...), not {allocator!r}"
            )
        # Each step hands its resource to an object that releases it when dropped, so an
        # exception at any point (a KeyboardInterrupt too) leaves nothing behind.
        self._region = RegionGuard(
            size, AccessPermissions.ReadWrite, allocator=allocator, name=name
        )
        self._assoc = _associate(self._region)
        self.name = name

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls, data: BytesLike, *, wipe_source: bool = True, name: str | None = None
    ) -> Secret:
        """Copy ``data`` in; a writable source (bytearray, memoryview) is zeroed after."""
        with memoryview(data) as raw, raw.cast("B") as view:
            secret = cls(view.nbytes, name=name)
            try:
                secret.write(0, view)
            except BaseException:
                secret.close()  # now, not when the traceback lets go of it
                raise
        if wipe_source:
            _wipe(data)
        return secret

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, name: str | None = None) -> Secret:
        """Read a file straight into protected memory (no intermediate Python copy)."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            secret = cls(size, name=name)
            with secret._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                with memoryview(g.mut_ref_guard()) as target:
                    filled = 0
                    while filled < size:
                        n = f.readinto(target[filled:])
                        if not n:
                            raise RegionError(f"{path} shrank while it was read")
                        filled += n
            if f.read(1):
                raise RegionError(f"{path} grew while it was read")
        return secret

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[BytesLike], *, wipe_source: bool = True, name: str | None = None
    ) -> Secret:
        """Assemble a secret from chunks of unknown total size.

        Growth copies between secure regions only; each outgrown region is wiped.
        """
        secret: Secret | None = None
        used = 0
        try:
            for chunk in chunks:
                with memoryview(chunk) as raw, raw.cast("B") as view:
                    if secret is None:
                        secret = cls(max(PAGE_SIZE, 2 * view.nbytes), name=name)
                    elif used + view.nbytes > len(secret):
                        secret = secret._moved(2 * (used + view.nbytes), used)
                    secret.write(used, view)
                    used += view.nbytes
                if wipe_source:
                    _wipe(chunk)
            if secret is None or used == 0:
                raise RegionError("from_chunks() got no bytes: a secret cannot be empty")
            if used != len(secret):
                secret = secret._moved(used, used)
        except BaseException:
            if secret is not None:
                secret.close()  # now, not when the traceback lets go of it
            raise
        return secret

    def _moved(self, capacity: int, used: int) -> Secret:
        """A new secret of ``capacity`` bytes holding our first ``used``; this one is closed."""
        moved = type(self)(capacity, name=self.name)
        try:
            with self.reveal() as old, memoryview(old) as mv:
                moved.write(0, mv[:used])  # buffer to buffer, no plain copy
        except BaseException:
            moved.close()
            raise
        self.close()
        return moved

    # -- use --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._region.size

    @property
    def closed(self) -> bool:
        return self._region.closed

    @property
    def address(self) -> int:
        """Where the bytes are (for diagnostics: reading it outside reveal() faults)."""
        return self._region.address

    def write(self, offset: int, data: BytesLike) -> None:
        """Copy ``data`` into the secret at ``offset``."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ArgumentTypeError(f"offset must be an int, not {offset!r}")
        offset = operator.index(offset)
        self._check()
        with memoryview(data) as raw, raw.cast("B") as src:
            if offset < 0 or offset + src.nbytes > len(self):
                raise RegionError(
                    f"writing {src.nbytes} bytes at {offset} overflows a {len(self)}-byte secret"
                )
            with self._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                g.mut_ref_guard()[offset : offset + src.nbytes] = src

    def reveal(self) -> AbstractContextManager[BytesRef]:
        """Inside the block: a read-only buffer over the secret (this thread only).

        ``with secret.reveal() as buf:`` -- entering and leaving are single C calls, so an
        exception raised by a signal handler cannot leave the secret open.
        """
        self._check()
        guard: AbstractContextManager[BytesRef] = self._assoc._guard(1, ReadGuard, BytesRef)
        return guard

    def equals(self, other: BytesLike) -> bool:
        """Constant-time comparison with ``other``."""
        with memoryview(other) as theirs, self.reveal() as buf:
            return hmac.compare_digest(buf, theirs)

    def _check(self) -> None:
        if self._region.closed:
            raise RegionError(f"{self!r} is closed")

    def close(self) -> None:
        """Wipe and unmap the secret (idempotent).

        Refused (RegionError, nothing changed) while this secret is being revealed; it can
        be closed once the reveal() block ends.
        """
        self._region.close()

    def __del__(self, _refused: type[Exception] = PkeyguardError) -> None:
        # Wipe as soon as the Secret is dropped.  A secret still being revealed is wiped when
        # the garbage collector frees its memory, once the block has ended.  (The error class
        # is bound at definition: module globals may be gone at interpreter exit.)
        region: Any = getattr(self, "_region", None)
        if region is not None:
            try:  # noqa: SIM105 - not contextlib: it may be gone at exit
                region.close()
            except _refused:
                pass

    def __enter__(self) -> Secret:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = getattr(self, "name", None)
        label = f" {name!r}" if name else ""
        region = getattr(self, "_region", None)
        state = "closed" if region is None or region.closed else f"{len(self)} bytes"
        return f"<Secret{label} {state}>"  # never the content
