"""from_stream / from_fd / from_file / from_writer / from_prompt under attack (the child
programs of ``test_s05_streams.py``)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import io
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pkeyguard import PkeyguardError, RegionError, Secret, StreamError, ViewError
from tests.adversarial.childlib import assert_clean, params, raises, snapshot
from tests.childhelpers import say


def fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def case_hostile_readinto() -> None:
    case = params()["case"]

    class HInt(int):
        def __index__(self) -> int:
            return 3

    class Weird:
        def __index__(self) -> int:
            return 4

    class R:
        n = 0
        kept: Any = None

        def readinto(self, b: memoryview) -> Any:
            self.n += 1
            if case == "none":
                return None
            if case == "neg":
                return -1
            if case == "toomuch":
                return len(b) + 1
            if case == "float":
                return 4.0
            if case == "str":
                return "4"
            if case == "bool":
                return True
            if case == "intsub":
                return HInt(4)
            if case == "index":
                return Weird()
            if case == "huge":
                return 2**70
            if case in ("raise", "kbint"):
                if self.n > 2:
                    raise (OSError("boom") if case == "raise" else KeyboardInterrupt())
                b[:] = b"A" * len(b)
                return len(b)
            if case == "forever":
                b[:] = b"B" * len(b)
                return len(b)
            if case == "zero_first":
                return 0
            if case == "release":
                b.release()
                return 0
            if self.n > 1:
                return 0
            b[:4] = b"abcd"
            if case == "keep_slice":
                self.kept = b[0:]
            if case == "keep_cast":
                self.kept = b.cast("B")
            if case == "keep_ctypes":
                self.kept = (ctypes.c_char * len(b)).from_buffer(b)
            if case == "keep_obj":
                self.kept = b.obj
            return 4

    Secret.from_bytes(b"w").close()
    snap = snapshot()
    r = R()
    try:
        x = Secret.from_stream(r)
        res = "ok"
        x.close()
    except (StreamError, RegionError):
        res = "refused"
    except (OSError, KeyboardInterrupt):
        res = "own"
    say(case, res)
    if case in ("keep_obj",):
        assert res == "ok"
        kept = r.kept
        raises(ViewError, lambda: kept[0])  # an expired view, not a live one
        del kept
    else:
        assert res in ("refused", "own"), res
    del r
    assert_clean(snap, case)


def case_max_size_errors_are_pkeyguard_errors() -> None:
    bad = {}
    r, w = os.pipe()
    os.write(w, b"x")
    os.close(w)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("from_stream 0", lambda: Secret.from_stream(io.BytesIO(b"x"), max_size=0)),
        ("from_stream -1", lambda: Secret.from_stream(io.BytesIO(b"x"), max_size=-1)),
        ("from_fd 0", lambda: Secret.from_fd(r, max_size=0)),
        ("from_prompt 0", lambda: Secret.from_prompt(max_size=0)),
    ]
    for label, fn in calls:
        try:
            fn()
            bad[label] = "accepted"
        except PkeyguardError:
            pass
        except BaseException as e:
            bad[label] = f"{type(e).__module__}.{type(e).__name__}: {e}"
    assert not bad, bad


def case_from_fd_and_from_file_odd_sources() -> None:
    Secret.from_bytes(b"w").close()
    snap = snapshot()
    f0 = fds()
    raises(OSError, Secret.from_fd, -1)
    raises(OSError, Secret.from_fd, 999)
    raises(TypeError, Secret.from_fd, True)
    d = os.open("/tmp", os.O_RDONLY)
    raises(OSError, Secret.from_fd, d)
    os.close(d)
    raises(OSError, Secret.from_file, "/tmp")
    raises(StreamError, Secret.from_file, "/dev/zero")
    raises(RegionError, Secret.from_file, "/dev/null")
    raises(OSError, Secret.from_file, "/proc/self/mem")
    assert len(Secret.from_file("/proc/self/status")) > 100
    a, b = socket.socketpair()
    b.sendall(b"sockdata")
    b.shutdown(socket.SHUT_WR)
    assert len(Secret.from_fd(a.fileno())) == 8
    a.close()
    b.close()
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"part")
    raises(OSError, Secret.from_fd, r)
    os.close(r)
    os.close(w)
    r, w = os.pipe()
    os.write(w, b"a" * 10)
    os.close(w)
    assert len(Secret.from_fd(r, max_size=10)) == 10
    os.close(r)
    r, w = os.pipe()
    os.write(w, b"a" * 11)
    os.close(w)
    raises(StreamError, lambda: Secret.from_fd(r, max_size=10))
    os.close(r)
    gc.collect()
    assert fds() == f0, (f0, fds())
    assert_clean(snap, "from_fd")


def case_keyboard_interrupt_during_from_file_on_a_fifo() -> None:
    p = f"/tmp/att_sec_fifo_{os.getpid()}"
    os.mkfifo(p)

    def writer() -> None:
        w = os.open(p, os.O_WRONLY)
        os.write(w, b"S" * 10000)
        time.sleep(2)
        os.close(w)

    Secret.from_bytes(b"w").close()
    snap = snapshot()
    th = threading.Thread(target=writer)
    th.start()

    def h(*a: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, h)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    raises(KeyboardInterrupt, Secret.from_file, p)
    th.join()
    os.unlink(p)
    open_fds = fds()
    assert_clean(snap, "KI")
    assert len(open_fds) <= 5, open_fds
    signal.signal(signal.SIGALRM, lambda *a: None)
    r, w = os.pipe()

    def w2() -> None:
        time.sleep(0.3)
        os.write(w, b"abc")
        time.sleep(0.3)
        os.write(w, b"def")
        os.close(w)

    threading.Thread(target=w2).start()
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    s = Secret.from_fd(r)
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert s.equals(b"abcdef")


def case_from_writer_and_from_prompt() -> None:
    Secret.from_bytes(b"w").close()
    snap = snapshot()
    raises(ZeroDivisionError, Secret.from_writer, 8, lambda b: 1 / 0)

    def kbd(b: memoryview) -> None:
        b[:4] = b"abcd"
        raise KeyboardInterrupt

    raises(KeyboardInterrupt, Secret.from_writer, 8, kbd)
    kept: list[memoryview] = []
    raises(StreamError, Secret.from_writer, 8, lambda b: kept.append(b[0:]))
    kept.clear()
    Secret.from_writer(8, lambda b: b.release()).close()

    def thread_write(b: memoryview) -> None:
        t = threading.Thread(target=lambda: b.__setitem__(slice(0, 4), b"TTTT"))
        t.start()
        t.join()

    s = Secret.from_writer(8, thread_write)
    say("writer buffer written from another thread:", s.equals(b"TTTT\0\0\0\0"))
    s.close()
    fd = os.open("/dev/null", os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.setsid()  # no controlling terminal even when pytest runs in one
    e = raises(OSError, Secret.from_prompt)
    assert e.errno == errno.ENXIO, e
    os.close(fd)
    assert_clean(snap, "writer")
