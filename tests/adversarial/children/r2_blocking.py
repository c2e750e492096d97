"""Issue 18, class 5: no call that can block runs while a secret's guard is open.

A reader thread fills a secret from a peer that stalls after a readiness test said "ready"
(a TCP urgent byte makes ``POLLPRI`` ready while ``read`` blocks; a second reader of the same
pipe, FIFO, socket or terminal takes the data between the readiness test and the read).  While
the reader waits, the secret must be closed to every thread: no guard active on it, and on the
mprotect backend its pages ``---``.  Each case asserts that its attack happened (the readiness
test reported ready, the second reader took data) before it checks the secret.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pty
import random
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from pkeyguard import Secret, StreamError
from tests.adversarial.childlib import MPROTECT, params, raises, wait_until
from tests.support import perms_at

# x86-64 numbers of the calls a reader may wait in (the futex of a GIL wait is not one).
_WAITING_SYSCALLS = {0, 7, 19, 23, 45, 232, 270, 271, 295, 327}


def _blocked(tid: int) -> bool:
    """Thread ``tid`` of this process sleeps in a read or a readiness wait."""
    try:
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/self/task/{tid}/syscall", encoding="ascii") as f:
            call = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return state == "S" and call.isdigit() and int(call) in _WAITING_SYSCALLS


def _live_secrets() -> list[Secret]:
    return [o for o in gc.get_objects() if type(o) is Secret and not o.closed]


def _settled(tid: int) -> None:
    """Let the reader react to what the peer did, then wait until it sleeps again."""
    time.sleep(0.2)
    assert wait_until(lambda: _blocked(tid), 10), f"the reader thread {tid} never waited"


def _assert_closed_while_stalled(tid: int, label: str) -> None:
    """The reader sleeps, waiting for the stalled peer: its secret is closed to everyone."""
    secrets = _live_secrets()
    assert len(secrets) == 1, f"{label}: expected the reader's secret, found {secrets}"
    secret = secrets[0]
    for _ in range(5):
        assert _blocked(tid), f"{label}: the reader stopped waiting"
        active = secret._region._binding._active
        assert active == 0, f"{label}: {active} guard(s) open on the secret while the peer stalls"
        if MPROTECT:
            perms = perms_at(secret.address)  # ---s for memfd_secret pages, ---p for mmap
            assert perms[:3] == "---", f"{label}: the secret is {perms} while the peer stalls"
        time.sleep(0.02)


class _Reader:
    """``Secret.<how>(...)`` on a thread; a profile hook sees every ``poll`` the library makes
    and, when armed, lets a second reader take the data right after the poll said ready."""

    def __init__(self, call: Callable[[], Secret], steal: Callable[[], bytes] | None) -> None:
        self.call = call
        self.steal = steal
        self.armed = False
        self.stolen: list[bytes] = []
        self.result: Secret | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if (
            event == "c_return"
            and self.armed
            and self.steal is not None
            and getattr(arg, "__name__", "") == "poll"
            and isinstance(getattr(arg, "__self__", None), type(select.poll()))
        ):
            data = self.steal()
            if data:
                self.stolen.append(data)
                self.armed = False  # once: then the peer stalls

    def _run(self) -> None:
        sys.setprofile(self._hook)
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc
        finally:
            sys.setprofile(None)

    def start(self) -> int:
        self.thread.start()
        tid = self.thread.native_id
        assert tid is not None
        return tid

    def join(self) -> Secret:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the reader never finished"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _steal_from(fd: int) -> Callable[[], bytes]:
    def steal() -> bytes:
        try:
            os.set_blocking(fd, False)
            return os.read(fd, 4096)
        except BlockingIOError:
            return b""
        finally:
            os.set_blocking(fd, True)

    return steal


@contextlib.contextmanager
def _tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    with peer, ours:
        yield ours, peer


def case_tcp_urgent_byte() -> None:
    """A TCP urgent byte: ``poll(POLLIN | POLLPRI)`` reports it, ``read`` would block."""
    how = params()["how"]
    with _tcp_pair() as (ours, peer):
        peer.sendall(b"abc")
        if how == "from_fd":
            reader = _Reader(lambda: Secret.from_fd(ours.fileno()), None)
        else:
            stream = ours.makefile("rb", buffering=0)
            reader = _Reader(lambda: Secret.from_stream(stream), None)
        tid = reader.start()
        _settled(tid)
        peer.send(b"!", socket.MSG_OOB)
        _settled(tid)
        _assert_closed_while_stalled(tid, f"TCP urgent byte ({how})")
        # The attack was on all along: the readiness test the library used reports the urgent
        # byte as ready, while read() has nothing (the old code, woken, blocked in readv and
        # skipped the byte, which cleared POLLPRI: it fails the check above).
        probe = select.poll()
        probe.register(ours.fileno(), select.POLLIN | select.POLLPRI)
        ready = dict(probe.poll(0)).get(ours.fileno(), 0)
        assert ready == select.POLLPRI, f"the urgent byte did not make poll ready: {ready:#x}"
        peer.sendall(b"def")
        peer.shutdown(socket.SHUT_WR)
        secret = reader.join()
    assert secret.equals(b"abcdef"), "the secret does not hold the normal data"
    secret.close()


class _Peer:
    """Both ends of one kind of channel: the library reads ``fd``; the test writes."""

    def __init__(self, kind: str, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.end = b"\n" if kind == "tty" else b""
        if kind in ("pipe", "stream"):
            self.fd, self._w = os.pipe()
            stack.callback(os.close, self.fd)
            if kind == "stream":
                self.raw = open(self.fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
                stack.callback(self.raw.close)
        elif kind == "fifo":
            folder = tempfile.mkdtemp()
            path = os.path.join(folder, "fifo")
            os.mkfifo(path)
            stack.callback(os.rmdir, folder)
            stack.callback(os.unlink, path)
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(self.fd, True)
            stack.callback(os.close, self.fd)
            self._w = os.open(path, os.O_WRONLY)
        elif kind == "unix":
            a, b = socket.socketpair()
            stack.enter_context(a)
            stack.enter_context(b)
            self.fd, self._w = a.fileno(), b.fileno()
        else:
            assert kind == "tty", kind
            self._w, self.fd = pty.openpty()
            stack.callback(os.close, self._w)
            stack.callback(os.close, self.fd)

    def read(self) -> Secret:
        if self.kind == "stream":
            return Secret.from_stream(self.raw)
        return Secret.from_fd(self.fd)

    def write(self, data: bytes) -> None:
        os.write(self._w, data + self.end)

    def finish(self) -> None:
        if self.kind == "tty":
            os.write(self._w, b"\x04")  # EOF at the start of a line
        elif self.kind == "unix":
            socket.socket(fileno=os.dup(self._w)).shutdown(socket.SHUT_WR)
        else:
            os.close(self._w)


def case_second_reader_takes_the_data() -> None:
    """A second reader of the same pipe, FIFO, socket or terminal takes the data between
    the library's readiness test and its read (the profile hook makes the race certain);
    ``stream``: an unbuffered file over a pipe whose writer stalls."""
    kind = params()["kind"]
    with contextlib.ExitStack() as stack:
        peer = _Peer(kind, stack)
        end = peer.end
        write, finish, target = peer.write, peer.finish, peer.fd
        # An unbuffered stream was read with a blocking readinto(): the writer's stall alone
        # held it open; the other kinds were polled first, so a second reader must win.
        steal = kind != "stream"
        reader = _Reader(peer.read, _steal_from(target) if steal else None)
        write(b"abc")
        tid = reader.start()
        _settled(tid)
        if steal:
            reader.armed = True
            write(b"x")
            _settled(tid)
            assert reader.stolen, f"{kind}: the second reader took nothing (no attack)"
        _assert_closed_while_stalled(tid, f"{kind}: the peer stalls")
        write(b"def")
        finish()
        secret = reader.join()
        assert secret.equals(b"abc" + end + b"def" + end), f"{kind}: wrong secret"
        secret.close()
        if kind in ("fifo", "tty", "pipe"):
            assert os.get_blocking(target), f"{kind}: the descriptor was left non-blocking"


def case_blocking_flag_survives_interrupts() -> None:
    """Reads that switch O_NONBLOCK on (a FIFO, a terminal: no RWF_NOWAIT) switch it back
    whatever a KeyboardInterrupt from a signal handler hits, and leak nothing."""
    rng = random.Random(params()["seed"])
    master, slave = pty.openpty()
    tty.setraw(slave)  # every byte at once, no line discipline
    interrupted = completed = 0

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        for _ in range(params()["rounds"]):
            os.write(master, b"s" * rng.randrange(2, 300))
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00002, 0.0004))
                    # raw mode: reads never see an end; max_size ends the read
                    Secret.from_fd(slave, max_size=1)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    # a signal that came just before the timer was stopped: its handler now
                    signal.pthread_sigmask(signal.SIG_BLOCK, ())
            except KeyboardInterrupt:
                interrupted += 1
            except StreamError:
                completed += 1
            assert os.get_blocking(slave), "a KeyboardInterrupt left O_NONBLOCK switched on"
            assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == set(), "signals left blocked"
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(slave, False)
                while os.read(slave, 4096):
                    pass
            os.set_blocking(slave, True)
    finally:
        signal.signal(signal.SIGALRM, old)
        os.close(master)
        os.close(slave)
    print(f"interrupted {interrupted}, completed {completed}")
    assert interrupted > 0, "no KeyboardInterrupt landed"
    gc.collect()
    assert not _live_secrets(), "a secret was left open"


def case_uncached_regular_file() -> None:
    """A regular file whose pages are not in the page cache: ``RWF_NOWAIT`` gives EAGAIN,
    and the pages are read into the cache outside the guard, then read into the secret."""
    data = os.urandom(300_000)
    fd, path = tempfile.mkstemp(dir=os.getcwd())  # not tmpfs: its pages cannot be dropped
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        prefetches = 0

        def count(frame: FrameType, event: str, arg: Any) -> None:
            nonlocal prefetches
            if event == "c_call" and getattr(arg, "__name__", "") == "sendfile":
                prefetches += 1

        with open(path, "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            sys.setprofile(count)
            try:
                secret = Secret.from_fd(f.fileno())
            finally:
                sys.setprofile(None)
    finally:
        os.unlink(path)
    assert prefetches > 0, "the file was not read uncached (no EAGAIN, nothing prefetched)"
    assert secret.equals(data)
    secret.close()


def case_nonblocking_descriptor_still_refused() -> None:
    """A descriptor the caller made non-blocking still gives BlockingIOError at once when it
    has no data (nothing waits, nothing is left open), for every way of reading it."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"part")
    exc = raises(BlockingIOError, Secret.from_fd, r)
    assert exc.errno == errno.EAGAIN, exc
    assert not os.get_blocking(r)
    os.close(r)
    os.close(w)
    gc.collect()
    assert not _live_secrets()
