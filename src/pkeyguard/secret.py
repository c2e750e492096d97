"""Secret: bytes that live in secure, key-protected memory and are read in a block.

A Secret's bytes sit in a region from :class:`pkeyguard.allocator.Secure` (guard pages,
mlock, no core dump, wiped on fork, canary, zeroed on close), tagged with a key that is
NoAccess outside ``with secret.reveal() as buf:``.  ``buf`` is a read-only buffer that
``hashlib``, ``hmac`` and ``cryptography`` accept without a copy.

All Secrets share one library-owned key (x86 has only 15): inside one secret's ``reveal()``
block the thread can read every secret.  Keep the blocks short.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import weakref
from collections.abc import Iterable, Iterator

from ._errors import RegionError
from ._owned import Unshareable
from ._permissions import AccessPermissions, PkeyPermissions
from .allocator import PAGE_SIZE, Allocator, Secure
from .pkey import AssociatedRegion, PkeyGuard
from .region import RegionGuard
from .views import BytesRef

__all__ = ["Secret"]

_key_lock = threading.Lock()
_shared_key: PkeyGuard | None = None
_users = 0  # open Secrets: the shared key is freed when the last one closes

BytesLike = bytes | bytearray | memoryview


def _associate(region: RegionGuard[bytes]) -> AssociatedRegion[bytes]:
    """Tag a secret's region with the shared secrets key (created on first use)."""
    global _shared_key, _users
    with _key_lock:
        if _shared_key is None or _shared_key.closed:
            _shared_key = PkeyGuard(PkeyPermissions.NoAccess, name="pkeyguard secrets")
        assoc = _shared_key.associate(region)
        _users += 1
        return assoc


def _close_region(region: RegionGuard[bytes]) -> None:
    """Wipe and unmap a secret's region; free the shared key after the last one."""
    global _shared_key, _users
    region.close()
    with _key_lock:
        _users -= 1
        if _users == 0 and _shared_key is not None:
            _shared_key.close()
            _shared_key = None


def _wipe(buffer: BytesLike) -> None:
    """Zero a writable source buffer (bytes are immutable and cannot be wiped)."""
    if isinstance(buffer, bytearray):
        buffer[:] = bytes(len(buffer))
    elif isinstance(buffer, memoryview) and not buffer.readonly:
        with buffer.cast("B") as flat:
            flat[:] = bytes(flat.nbytes)


class Secret(Unshareable):
    """Secret bytes in protected memory; read them only inside :meth:`reveal`."""

    __slots__ = ("__weakref__", "_assoc", "_finalizer", "_region", "name")
    _cannot_pickle = "a Secret cannot be pickled"
    _cannot_copy = "a Secret cannot be copied"

    def __init__(
        self, size: int, *, name: str | None = None, allocator: Allocator | None = None
    ) -> None:
        """An all-zero secret of ``size`` bytes; fill it with :meth:`write` or use a
        ``from_*`` constructor."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise RegionError(f"a secret needs a positive size in bytes, got {size!r}")
        region = RegionGuard(
            size, AccessPermissions.ReadWrite, allocator=allocator or Secure(), name=name
        )
        try:
            self._assoc: AssociatedRegion[bytes] = _associate(region)
        except BaseException:
            region.close()
            raise
        self._region = region
        self.name = name
        # A secret dropped without close() is still wiped; the key holds the region alive
        # until then, so the finalizer must hang on the Secret, not the region.
        self._finalizer = weakref.finalize(self, _close_region, region)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls, data: BytesLike, *, wipe_source: bool = True, name: str | None = None
    ) -> Secret:
        """Copy ``data`` in; a writable source (bytearray, memoryview) is zeroed after."""
        view = memoryview(data).cast("B")
        secret = cls(view.nbytes, name=name)
        try:
            secret.write(0, view)
        except BaseException:
            secret.close()
            raise
        finally:
            view.release()
        if wipe_source:
            _wipe(data)
        return secret

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, name: str | None = None) -> Secret:
        """Read a file straight into protected memory (no intermediate Python copy)."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            secret = cls(size, name=name)
            try:
                with secret._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                    mut = g.mut_ref_guard()
                    with memoryview(mut) as target:
                        filled = 0
                        while filled < size:
                            n = f.readinto(target[filled:])
                            if not n:
                                raise RegionError(f"{path} shrank while it was read")
                            filled += n
                if f.read(1):
                    raise RegionError(f"{path} grew while it was read")
            except BaseException:
                secret.close()
                raise
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
                view = memoryview(chunk).cast("B")
                try:
                    if secret is None:
                        secret = cls(max(PAGE_SIZE, 2 * view.nbytes), name=name)
                    elif used + view.nbytes > len(secret):
                        secret = secret._moved(2 * (used + view.nbytes), used)
                    secret.write(used, view)
                    used += view.nbytes
                finally:
                    view.release()
                if wipe_source:
                    _wipe(chunk)
            if secret is None or used == 0:
                raise RegionError("from_chunks() got no bytes: a secret cannot be empty")
            if used != len(secret):
                secret = secret._moved(used, used)
            return secret
        except BaseException:
            if secret is not None:
                secret.close()
            raise

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
    def region(self) -> RegionGuard[bytes]:
        return self._region

    @property
    def key(self) -> PkeyGuard:
        return self._assoc.key

    def write(self, offset: int, data: BytesLike) -> None:
        """Copy ``data`` into the secret at ``offset``."""
        self._check()
        with memoryview(data).cast("B") as src:
            if offset < 0 or offset + src.nbytes > len(self):
                raise RegionError(
                    f"writing {src.nbytes} bytes at {offset} overflows a {len(self)}-byte secret"
                )
            with self._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                g.mut_ref_guard()[offset : offset + src.nbytes] = src

    @contextlib.contextmanager
    def reveal(self) -> Iterator[BytesRef]:
        """Inside the block: a read-only buffer over the secret (this thread only)."""
        self._check()
        with self._assoc.set_access_rights(PkeyPermissions.ReadOnly) as g:
            yield g.ref_guard()

    def equals(self, other: BytesLike) -> bool:
        """Constant-time comparison with ``other``."""
        with self.reveal() as buf:
            return hmac.compare_digest(buf, other)

    def _check(self) -> None:
        if self._region.closed:
            raise RegionError(f"{self!r} is closed")

    def close(self) -> None:
        """Wipe and unmap the secret (idempotent)."""
        self._finalizer()  # runs _close_region once; later calls do nothing

    def __enter__(self) -> Secret:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        state = "closed" if self.closed else f"{len(self)} bytes"
        return f"<Secret{label} {state}>"  # never the content
