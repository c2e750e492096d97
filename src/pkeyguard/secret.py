"""Secret: bytes that live in secure, key-protected memory and are read in a block.

A Secret's bytes sit in a region from :class:`pkeyguard.allocator.Secure` (guard pages,
mlock, no core dump, wiped on fork, canary, zeroed on close), tagged with a key that is
NoAccess outside ``with secret.reveal() as buf:``.  ``buf`` is a read-only buffer that
``hashlib``, ``hmac`` and ``cryptography`` accept without a copy.

Each Secret has a key of its own, freed when the Secret closes: inside one secret's
``reveal()`` block the thread can read that secret only.  On ``pku`` the keys are virtual
(any number of Secrets; 15 hold a hardware key at a time, the others are parked: their
pages are closed to every thread until their next ``reveal()``).

A fork child never gets a parent's secret bytes: there, every use of an inherited Secret
raises :class:`SecretUnavailableError` (closing it works).  Streams are read with
``readinto``/``readv`` straight into protected memory, never through a ``bytes`` object.
"""

from __future__ import annotations

import errno
import fcntl
import hmac as _hmac
import io
import os
import select
import signal
import stat
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from ._checks import check_name, exact_int
from ._errors import (
    ArgumentTypeError,
    MprotectError,
    PkeyguardError,
    RegionError,
    RegionTypeError,
    SecretUnavailableError,
    StreamError,
    ViewError,
)
from ._owned import Unshareable
from ._permissions import AccessPermissions, PkeyPermissions
from ._terminal import QuietTerminal
from .allocator import PAGE_SIZE, Secure
from .pkey import AssociatedRegion, PkeyGuard, ReadGuard
from .region import RegionGuard
from .views import BytesRef

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["Secret"]

BytesLike = bytes | bytearray | memoryview

#: The most a stream may give a Secret unless ``max_size`` says otherwise: secrets are small,
#: and their memory is locked (it counts against RLIMIT_MEMLOCK).
DEFAULT_MAX_SIZE = 1 << 20


class SupportsReadinto(Protocol):
    """A binary stream: ``readinto(buffer)`` fills a prefix of ``buffer`` and returns its length
    (0 at end of stream; None when a non-blocking stream has no data now)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def _associate(region: RegionGuard[bytes]) -> AssociatedRegion[bytes]:
    """Tag a secret's region with a key of its own.  The core frees the key when the
    association ends (the secret closes): nobody else can reach it."""
    key = PkeyGuard(PkeyPermissions.NoAccess, name="pkeyguard secret")
    try:
        assoc = key.associate(region)
    except BaseException:
        key.close()  # not held while the traceback keeps this frame alive
        raise
    key._set_autoclose()  # from here on the key is the Secret's: closed with its association
    return assoc


def _check_size(size: object) -> int:
    n = exact_int(
        size, RegionTypeError, "a secret needs a positive size in bytes (an int), got {!r}"
    )
    if n <= 0:
        raise RegionError(f"a secret needs a positive size in bytes, got {n}")
    return n


def _check_max_size(max_size: object) -> int | None:
    if max_size is None:
        return None
    n = exact_int(max_size, ArgumentTypeError, "max_size must be an int or None, not {!r}")
    if n <= 0:
        raise RegionError(f"max_size must be positive, got {n}")
    return n


#: Signals whose Python handlers may raise (KeyboardInterrupt): blocked while a descriptor's
#: O_NONBLOCK flag is switched on for one read, so that nothing can leave it switched on.
#: Faults stay deliverable.
_ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
}

#: What ``preadv2`` says when a file has no per-call non-blocking read (``RWF_NOWAIT``):
#: EOPNOTSUPP (a terminal, a FIFO opened by path, a /proc file, many file systems),
#: EINVAL (a kernel before 4.14), ENOSYS (before 4.6).
_NO_NOWAIT = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
# The largest descriptor number (a C int); a larger one names no open descriptor.
_FD_MAX = 2**31 - 1
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _sigmask(how: int, signals: Iterable[int]) -> Iterable[int]:
    return signal.pthread_sigmask(how, signals)


class _FdReader:
    """Reads of one descriptor that never block: a read runs inside the secret's ReadWrite
    guard, and on the mprotect backend that guard opens the secret to every thread, so a
    read that waited for a stalled peer would hold it open as long as the peer likes
    (issue 18, class 5).  :meth:`read` gives None where a read would block; the caller then
    leaves the guard and calls :meth:`wait`, which blocks outside any guard.

    ``poll()`` before a blocking read is no answer: readiness is a hint (a TCP urgent byte
    makes ``POLLPRI`` ready while ``read`` still blocks; another reader of the same pipe or
    terminal can take the data between the two calls).  So each read is non-blocking:

    - ``preadv2(RWF_NOWAIT)``, a per-call flag, where the file supports it (pipes made by
      ``pipe()``, sockets, regular files on most local file systems);
    - else, for anything but a regular file, ``readv`` with ``O_NONBLOCK`` switched on for
      that one read (terminals, FIFOs opened by path, character devices), with every
      asynchronous signal blocked until the flag is back (it is a flag of the open file
      description: other holders of the description see it during that one read); a
      descriptor that is non-blocking already (the caller's, or QuietTerminal's own
      description) is read as it is, with no signal blocked (``pthread_sigmask`` runs pending
      Python handlers, which must not run inside the guard);
    - else (a regular file on a file system without ``RWF_NOWAIT``: /proc, FUSE, NFS on old
      kernels) a plain ``readv``: it waits for the file system, never for a peer, but a
      stalled FUSE server holds the secret open while it stalls (SECURITY.md).

    A regular file whose pages are not cached gives EAGAIN to ``RWF_NOWAIT``: :meth:`wait`
    then reads them into the page cache outside the guard (``sendfile`` to /dev/null, no copy
    in this process).
    """

    __slots__ = (
        "_block",
        "_empty",
        "_fd",
        "_misses",
        "_nowait",
        "_own_nonblocking",
        "_regular",
        "_want",
    )

    def __init__(
        self,
        fd: int,
        *,
        block: bool,
        empty: Callable[[], BaseException],
        own_description: bool = False,
    ) -> None:
        st = os.fstat(fd)
        self._fd = fd
        # A non-blocking description of the library's own (QuietTerminal's): nobody else can
        # switch the flag off, so a read needs no flag and no signal mask.
        self._own_nonblocking = own_description and not os.get_blocking(fd)
        self._regular = stat.S_ISREG(st.st_mode)
        self._nowait = _RWF_NOWAIT is not None
        self._block = block  # wait for data (a blocking descriptor), or raise empty()
        self._empty = empty
        self._misses = 0  # RWF_NOWAIT misses in a row on a regular file
        self._want = PAGE_SIZE

    def read(self, target: memoryview) -> int | None:
        """One read into ``target`` that never blocks: the byte count, or None (no data now)."""
        self._want = target.nbytes
        if self._nowait and _RWF_NOWAIT is not None:
            try:
                n = os.preadv(self._fd, [target], -1, _RWF_NOWAIT)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in _NO_NOWAIT:
                    raise
                self._nowait = False  # this file has no per-call non-blocking read
            else:
                self._misses = 0
                return n
        if self._regular:
            return os.readv(self._fd, [target])
        return self._read_nonblocking(target)

    def _read_nonblocking(self, target: memoryview) -> int | None:
        fd = self._fd
        # Already non-blocking (our own description, or the caller's choice, read per call
        # since another holder can change it): nothing to switch, so no signal to block
        # (pthread_sigmask runs pending Python handlers, here inside the guard).
        if self._own_nonblocking or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            try:
                return os.readv(fd, [target])
            except BlockingIOError:
                return None
        # The mask to restore is read first: pthread_sigmask() runs pending handlers after it
        # changes the mask, so the call that blocks may raise with the mask already changed.
        mask = _sigmask(signal.SIG_BLOCK, ())
        try:
            _sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            try:
                return os.readv(fd, [target])
            except BlockingIOError:
                return None
            finally:
                if not flags & os.O_NONBLOCK:
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        finally:
            _sigmask(signal.SIG_SETMASK, mask)

    def wait(self) -> None:
        """Outside any guard: wait until a read can make progress (after :meth:`read` gave
        None), or raise ``empty()`` for a non-blocking descriptor."""
        if self._regular:
            self._misses += 1
            if self._misses > 3:
                self._nowait = False  # the page cache keeps losing them: read plainly
            self._prefetch()
            return
        if not self._block:
            raise self._empty()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)  # POLLPRI is no data for read()
        poller.poll()  # retried on EINTR (PEP 475); a signal handler's exception propagates

    def _prefetch(self) -> None:
        """Bring the next pages of a regular file into the page cache, outside the guard."""
        fd = self._fd
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        with open(os.devnull, "wb", buffering=0) as sink:  # owned at once: nothing leaks
            try:
                os.sendfile(sink.fileno(), fd, offset, max(self._want, PAGE_SIZE))
            except OSError:
                self._nowait = False  # no splice from this file: read it plainly from now on


def _no_data() -> BaseException:
    return BlockingIOError(
        errno.EAGAIN,
        "the descriptor is non-blocking and has no data now: make it blocking, or read the "
        "secret once it has all arrived",
    )


def _no_data_now(what: str) -> BaseException:
    return StreamError(
        f"{what} has no data now (a non-blocking stream): make it blocking, or read the "
        "secret once it has all arrived"
    )


def _plain_descriptor(stream: object) -> int | None:
    """The descriptor of a blocking unbuffered file (``io.FileIO``) or socket file
    (``socket.SocketIO`` without a timeout), whose ``readinto()`` is one ``read(2)`` of it;
    None for any other stream."""
    kinds: list[type] = [io.FileIO]
    socket = sys.modules.get("socket")  # not imported: no socket file can exist
    if socket is not None:
        kinds.append(socket.SocketIO)
    if type(stream) not in kinds:
        return None
    raw: Any = stream
    if raw.closed or not raw.readable():
        return None  # its own readinto() says what is wrong
    fd: int = raw.fileno()
    return fd if os.get_blocking(fd) else None


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking descriptor, waiting while its output is full."""
    with memoryview(data) as rest:
        while rest:
            try:
                rest = rest[os.write(fd, rest) :]
            except BlockingIOError:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                poller.poll()


def _wipe(buffer: object) -> None:
    """Zero a writable source buffer (bytes are immutable and cannot be wiped)."""
    if isinstance(buffer, bytearray):
        buffer[:] = bytes(len(buffer))
    elif isinstance(buffer, memoryview) and not buffer.readonly:
        with buffer.cast("B") as flat:
            flat[:] = bytes(flat.nbytes)


# OpenSSL's one-shot HMAC, which hmac.digest() tries first. Called directly so that an
# unsupported digest raises (UnsupportedDigestmodError, a ValueError) instead of falling back
# to hmac's pure-Python path, which builds padded copies of the key as plain bytes.
_openssl_hmac: Callable[[Any, Any, str], bytes] | None
try:
    from _hashlib import hmac_digest as _openssl_hmac
except ImportError:  # a Python built without OpenSSL
    _openssl_hmac = None


def _digest_name(digest: object) -> str:
    """The OpenSSL name of ``digest``: a name, or what a hashlib constructor's object is called
    (the constructor is called with no data, before anything is revealed)."""
    if type(digest) is str:
        return digest
    if not callable(digest):
        raise ArgumentTypeError(
            f"digest must be a hash name such as 'sha256' or a hashlib constructor, not {digest!r}"
        )
    name = getattr(digest(), "name", None)
    if type(name) is not str:
        raise ArgumentTypeError(
            f"digest {digest!r} made an object without a str .name: pass a hash name such as "
            "'sha256'"
        )
    return name


def _end_stuck(secret: Secret) -> None:
    """End, on this thread, the guards on ``secret`` whose exit failed (no caller holds them:
    a reveal() block's, or one an operation entered), even if the pages still cannot be
    re-protected: the caller closes the secret next, which wipes and unmaps it."""
    assoc: Any = getattr(secret, "_assoc", None)
    if assoc is not None and assoc.associated:
        assoc._end_stuck(True)


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
        name = check_name(name, RegionTypeError)
        if allocator is None:
            allocator = Secure()
        elif type(allocator) is not Secure:
            raise ArgumentTypeError(
                f"a Secret's allocator must be allocator.Secure(...), not {allocator!r}"
            )
        # Each step hands its resource to an object that releases it when dropped; a failed
        # step closes what the steps before made at once, since the traceback keeps this
        # frame (and the region, mapped read-write) alive as long as the caller keeps the
        # exception.
        region = RegionGuard(size, AccessPermissions.ReadWrite, allocator=allocator, name=name)
        try:
            self._assoc = _associate(region)
        except BaseException:
            region.close()
            raise
        self._region = region
        self.name = name

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls, data: BytesLike, *, wipe_source: bool = True, name: str | None = None
    ) -> Secret:
        """Copy ``data`` in; a writable source (bytearray, memoryview) is zeroed after."""
        name = check_name(name, RegionTypeError)  # each from_* checks first: nothing is read
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
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        max_size: int | None = DEFAULT_MAX_SIZE,
        name: str | None = None,
    ) -> Secret:
        """Read a file to its end straight into protected memory (no Python copy).

        Any readable file: a regular file, a pipe or FIFO, ``/dev/stdin``, a ``/proc`` file
        (which reports size 0).  See :meth:`from_fd` for ``max_size``.
        """
        if not isinstance(path, (str, bytes, os.PathLike)):
            # open() would take an int as a descriptor to read and then close
            raise ArgumentTypeError(
                f"path must be a str or an os.PathLike (from_fd reads a descriptor), "
                f"not {type(path).__name__}"
            )
        name = check_name(name, RegionTypeError)
        with open(path, "rb", buffering=0) as f:
            return cls.from_fd(f.fileno(), max_size=max_size, name=name)

    @classmethod
    def from_fd(
        cls, fd: int, *, max_size: int | None = DEFAULT_MAX_SIZE, name: str | None = None
    ) -> Secret:
        """Read file descriptor ``fd`` to end of file with ``os.readv`` straight into
        protected memory.  The descriptor stays open; it is read from its current offset.

        More than ``max_size`` bytes (default 1 MiB; None for no limit) raise
        :class:`StreamError`.  The size of a regular file is only a hint: a file that grows
        or shrinks while it is read gives the bytes that were read.  Any failure wipes and
        unmaps what was read.
        """
        fd = exact_int(fd, ArgumentTypeError, "fd must be an int (a file descriptor), not {!r}")
        if not 0 <= fd <= _FD_MAX:
            # what the kernel says of any other number that names no open descriptor
            raise OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: {fd}")
        max_size = _check_max_size(max_size)
        name = check_name(name, RegionTypeError)
        return cls._from_descriptor(fd, max_size, name, f"file descriptor {fd}", _no_data)

    @classmethod
    def _from_descriptor(
        cls,
        fd: int,
        max_size: int | None,
        name: str | None,
        what: str,
        empty: Callable[[], BaseException],
    ) -> Secret:
        """Read ``fd`` to its end with reads that never block inside the guard (``empty()``
        is raised where a non-blocking descriptor has no data now)."""
        st = os.fstat(fd)
        hint = st.st_size if stat.S_ISREG(st.st_mode) else 0
        reader = _FdReader(fd, block=os.get_blocking(fd), empty=empty)
        return cls._from_reader(reader.read, hint, max_size, name, what, wait=reader.wait)

    @classmethod
    def from_stream(
        cls,
        stream: SupportsReadinto,
        *,
        max_size: int | None = DEFAULT_MAX_SIZE,
        name: str | None = None,
    ) -> Secret:
        """Read a binary stream to its end with ``stream.readinto()`` straight into protected
        memory: ``io.BytesIO``, ``open(path, "rb", buffering=0)``, a socket's
        ``makefile("rb", buffering=0)``.

        ``readinto`` is handed a memoryview over the secret; it must return how many bytes it
        wrote there (0 at the end), and must not keep the memoryview.  A stream that breaks
        those rules, or gives more than ``max_size`` bytes, raises :class:`StreamError`.
        A buffered stream (``open(path, "rb")``, ``sys.stdin.buffer``) keeps a plain copy of
        what it buffered: prefer :meth:`from_fd` or unbuffered streams (``buffering=0``).

        ``readinto`` runs with the secret open (on the mprotect backend, to every thread), so
        it must not block; an unbuffered file or a socket file without a timeout is read as
        :meth:`from_fd` reads its descriptor, never blocking there.
        """
        readinto = getattr(stream, "readinto", None)
        if not callable(readinto):
            raise ArgumentTypeError(
                f"{type(stream).__name__} has no readinto(): from_stream reads binary streams "
                "straight into protected memory (for sys.stdin use Secret.from_fd(0), or "
                "sys.stdin.buffer)"
            )
        max_size = _check_max_size(max_size)
        name = check_name(name, RegionTypeError)
        what = f"{type(stream).__name__} stream"
        fd = _plain_descriptor(stream)
        if fd is not None:
            # An unbuffered file or a socket without a timeout: its readinto() is one read(2)
            # of the descriptor, which may block inside the guard; read it the same way with
            # reads that never block there.
            return cls._from_descriptor(fd, max_size, name, what, lambda: _no_data_now(what))
        return cls._from_reader(readinto, 0, max_size, name, what)

    @classmethod
    def from_prompt(
        cls, prompt: str = "Password: ", *, max_size: int = 4096, name: str | None = None
    ) -> Secret:
        """Ask for a password on the controlling terminal, without echo, and read the line
        straight into protected memory (``getpass.getpass()`` returns a ``str``, a copy that
        cannot be wiped).  The newline is not kept; an empty line is refused.

        The terminal's own line buffer (in the kernel) and the terminal emulator have seen
        the keystrokes; this process holds them only in the secret.  Raises ``OSError`` when
        there is no terminal (``ENXIO``): read from a file or pipe with :meth:`from_fd`.
        """
        if not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt must be a str, not {prompt!r}")
        limit = _check_max_size(max_size)
        name = check_name(name, RegionTypeError)  # before the prompt is shown
        text = str.encode(prompt, "utf-8", "replace")
        # Echo off and back on are single C calls (QuietTerminal's __enter__ and __exit__):
        # a Ctrl-C at any moment finds echo restored and the descriptor closed.  The terminal
        # is a description of our own, non-blocking: the wait for a line happens outside the
        # guard (see _FdReader).
        with QuietTerminal() as fd:
            _write_all(fd, text)
            reader = _FdReader(fd, block=True, empty=_no_data, own_description=True)
            return cls._from_reader(
                reader.read, 0, limit, name, "the terminal", line=True, wait=reader.wait
            )

    @classmethod
    def _from_reader(
        cls,
        read: Callable[[memoryview], object],
        hint: int,
        max_size: int | None,
        name: str | None,
        what: str,
        *,
        line: bool = False,
        wait: Callable[[], None] | None = None,
    ) -> Secret:
        """Read to the end (``line``: to the first newline, which is not kept): into a
        secret with room for one byte more than expected (so the end shows without a plain
        copy), doubling it (secure to secure) when it fills up, and trimming it to what came
        at the end.  With ``wait``, ``read`` never blocks: it gives None when it has no data
        now, and ``wait()`` waits for some outside the guard."""
        limit = max_size + 1 if max_size is not None else None  # room to see one byte too many
        capacity = max(PAGE_SIZE, hint + 1)
        if limit is not None:
            capacity = min(capacity, limit)
        secret = cls(capacity, name=name)
        used = 0
        try:
            while True:
                if used == len(secret):
                    if limit is not None and used >= limit:
                        raise StreamError(f"{what} gave more than max_size={max_size} bytes")
                    grown = 2 * used if limit is None else min(2 * used, limit)
                    secret = secret._moved(grown, used)
                n = secret._read_into(read, used, what, may_wait=wait is not None)
                if n is None:  # only with a wait (else _read_into raised)
                    if wait is None:
                        raise _no_data_now(what)
                    wait()  # outside the guard
                    continue
                if n == 0:
                    break
                used += n
                if line and secret._newline_at(used - 1):
                    used -= 1
                    break
            if used == 0:
                raise RegionError(f"{what} gave no bytes: a secret cannot be empty")
            if used != len(secret):
                secret = secret._moved(used, used)
        except BaseException:
            secret.close()  # wiped now, not when the traceback lets go of it
            raise
        return secret

    @classmethod
    def from_writer(
        cls, size: int, write: Callable[[memoryview], object], *, name: str | None = None
    ) -> Secret:
        """A secret of ``size`` bytes filled in place by ``write(buffer)``: a writable
        memoryview over the secret, valid during the call only (keeping it raises
        :class:`StreamError`).  For APIs that write their output into a buffer, so that it
        never exists as ``bytes``::

            with ikm_secret.reveal() as ikm:      # reveal inputs first, outside the call
                key = Secret.from_writer(32, lambda out: hkdf.derive_into(ikm, out))

        Whatever ``write`` returns is ignored; if it raises, the secret is wiped.  ``write``
        runs with the secret open (on the mprotect backend, to every thread): it should not
        block.
        """
        name = check_name(name, RegionTypeError)
        secret = cls(size, name=name)
        try:
            secret._read_into(lambda target: (write(target), 0)[1], 0, "the writer")
        except BaseException:
            secret.close()
            raise
        return secret

    def _newline_at(self, offset: int) -> bool:
        try:
            with self.reveal() as buf, memoryview(buf) as whole:
                # one byte as a small int: CPython's preallocated singletons, nothing is
                # allocated
                return whole[offset] == 0x0A
        except MprotectError:
            self._settle()
            raise

    def _read_into(
        self,
        read: Callable[[memoryview], object],
        offset: int,
        what: str,
        *,
        may_wait: bool = False,
    ) -> int | None:
        """One ``read(buffer)`` into this secret from ``offset``; the byte count it gave
        (None: no data now, where ``may_wait`` allows it).  ``read`` runs inside the
        ReadWrite guard: it must not block (see :class:`_FdReader`)."""
        self._check()
        try:
            with self._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                with memoryview(g.mut_ref_guard()) as whole, whole[offset:] as target:
                    room = target.nbytes
                    n = read(target)
        except MprotectError:
            self._settle()
            raise
        except ViewError as exc:
            if self._region._binding is None or self._region.closed:
                raise
            raise StreamError(
                f"{what} kept the memoryview it was given (a buffer over the secret): the "
                "secret was wiped; touching that memoryview now faults"
            ) from exc
        if self._region._inherited:
            raise SecretUnavailableError(
                f"the process forked while {what} was being read into a secret; the child has "
                "no copy of it (read the secret again in the child)"
            )
        if n is None:
            if may_wait:
                return None
            raise _no_data_now(what)
        if type(n) is not int:
            raise StreamError(f"{what}: readinto() returned {type(n).__name__}, not a byte count")
        if not 0 <= n <= room:
            raise StreamError(f"{what}: readinto() returned {n} for a {room}-byte buffer")
        return n

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[BytesLike], *, wipe_source: bool = True, name: str | None = None
    ) -> Secret:
        """Assemble a secret from chunks of unknown total size.

        Growth copies between secure regions only; each outgrown region is wiped.
        """
        name = check_name(name, RegionTypeError)  # before a chunk is taken
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
            # buffer to buffer, no plain copy; the slice is released by name, since the
            # traceback of an exception raised inside write() (a Ctrl-C) keeps it alive
            with self.reveal() as old, memoryview(old) as mv, mv[:used] as part:
                moved.write(0, part)
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
    def backing(self) -> Literal["memfd_secret", "mmap"]:
        """Where the bytes live: ``memfd_secret`` pages (out of the kernel's direct map) or
        private ``mmap`` pages (see :class:`pkeyguard.allocator.Secure`)."""
        # the core's name for the pages' backing (its table of backings, _core.h)
        return cast('Literal["memfd_secret", "mmap"]', self._region._backing)

    @property
    def address(self) -> int:
        """Where the bytes are (for diagnostics: reading it outside reveal() faults)."""
        return self._region.address

    def write(self, offset: int, data: BytesLike) -> None:
        """Copy ``data`` into the secret at ``offset``."""
        offset = exact_int(offset, ArgumentTypeError, "offset must be an int, not {!r}")
        self._check()
        with memoryview(data) as raw, raw.cast("B") as src:
            if offset < 0 or offset + src.nbytes > len(self):
                raise RegionError(
                    f"writing {src.nbytes} bytes at {offset} overflows a {len(self)}-byte secret"
                )
            try:
                with self._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:
                    g.mut_ref_guard()[offset : offset + src.nbytes] = src
            except MprotectError:
                self._settle()
                raise

    def reveal(self) -> AbstractContextManager[BytesRef]:
        """Inside the block: a read-only buffer over the secret (this thread only).

        ``with secret.reveal() as buf:`` -- entering and leaving are single C calls, so an
        exception raised by a signal handler cannot leave the secret open.
        """
        self._check()
        guard: AbstractContextManager[BytesRef] = self._assoc._guard(1, ReadGuard, BytesRef)
        return guard

    def hmac(self, msg: BytesLike, digest: str | Callable[..., Any] = "sha256") -> bytes:
        """HMAC of ``msg`` with this secret as the key, computed by OpenSSL on the revealed
        bytes: no copy (``hmac.new`` would insist on a ``bytes`` copy of the key).

        ``digest`` is a hash name OpenSSL knows (``"sha256"``, ``"blake2b"``, ...) or a
        hashlib constructor (``hashlib.sha256``), which is only asked for its name: handing it
        to ``hmac`` would take hmac's pure-Python path, which pads and XORs the key into plain
        ``bytes``. A name OpenSSL does not know raises ValueError.
        """
        name = _digest_name(digest)
        if _openssl_hmac is None:
            raise PkeyguardError(
                "this Python has no OpenSSL HMAC (_hashlib): Secret.hmac() cannot run without "
                "copying the key"
            )
        # The message's buffer first: its __buffer__ is user code (it may fork, or close this
        # secret), and nothing but OpenSSL may run while the secret is open.
        try:
            with memoryview(msg) as message, self.reveal() as key:
                return _openssl_hmac(key, message, name)
        except MprotectError:
            self._settle()
            raise

    def equals(self, other: BytesLike) -> bool:
        """Constant-time comparison with ``other``."""
        try:
            with memoryview(other) as theirs, self.reveal() as buf:
                return _hmac.compare_digest(buf, theirs)
        except MprotectError:
            self._settle()
            raise

    def _settle(self) -> None:
        """After an MprotectError in an operation that opened the secret internally: if the
        exit of its guard failed (the core already tried twice), try once more.  That guard
        is the library's, so no caller could leave it again; if it still fails it stays
        active (fail closed) and the next exit on this thread, or close(), retries it."""
        assoc = self._assoc
        if assoc.associated:
            assoc._end_stuck(False)

    def _check(self) -> None:
        region = self._region
        if region.closed:
            raise RegionError(f"{self!r} is closed")
        if region._inherited:
            raise SecretUnavailableError(
                f"{self!r} was made before this process forked: a fork child never gets a "
                "parent's secret bytes (it sees zero pages there). Make or load the secret in "
                "the child, or use a 'spawn' or 'forkserver' multiprocessing context and pass "
                "the child what it needs to load it (close() works here)"
            )

    def close(self) -> None:
        """Wipe and unmap the secret (idempotent).

        Refused (RegionError, nothing changed) while this secret is being revealed; it can
        be closed once the reveal() block ends.  A reveal() block (or an operation) whose
        exit failed to re-protect the pages has ended all the same: close() ends its guard
        for good on this thread, then wipes and unmaps the secret.
        """
        _end_stuck(self)
        self._region.close()

    def __del__(
        self,
        _refused: type[Exception] = PkeyguardError,
        _end: Callable[[Secret], None] = _end_stuck,
    ) -> None:
        # Wipe as soon as the Secret is dropped.  A secret still being revealed is wiped when
        # the garbage collector frees its memory, once the block has ended.  (The error class
        # and the helper are bound at definition: module globals may be gone at interpreter
        # exit.)
        region: Any = getattr(self, "_region", None)
        if region is not None:
            try:  # not contextlib: it may be gone at exit
                _end(self)
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
        if region is None or region.closed:
            state = "closed"
        elif region._inherited:
            state = "inherited across fork: unavailable"
        else:
            state = f"{len(self)} bytes"
        return f"<Secret{label} {state}>"  # never the content
