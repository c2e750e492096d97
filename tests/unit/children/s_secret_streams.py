"""Child programs of ``tests/unit/test_secret_streams.py``: hostile streams, each case in a
fresh interpreter.  A hostile case makes a first secret (so the library's bookkeeping exists
before the snapshot), runs, then checks that nothing leaked and prints ``clean``."""

from __future__ import annotations

import gc
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pkeyguard import (
    GuardStateError,
    RegionError,
    Secret,
    SecretUnavailableError,
    StreamError,
    _core,
)
from tests.adversarial.childlib import params
from tests.childhelpers import say
from tests.support import anon_mappings, new_anon_mappings

Before = tuple[set[tuple[int, int, str]], int]


def snapshot() -> Before:
    gc.collect()
    return anon_mappings(), _core.live_key_count()


def assert_clean(before: Before) -> None:
    gc.collect()
    maps, keys = before
    assert _core.thread_guards() == [], "a guard is still active"
    assert _core.live_key_count() == keys, "a key was leaked"
    leaked = {
        m
        for m in new_anon_mappings(maps, anon_mappings())
        if not (m[2] == "rw-p" and m[1] - m[0] >= 1 << 18)
    }
    assert not leaked, f"leaked {sorted(leaked)}"


class Reader:
    """Gives ``chunks`` (bytes) in turn, then returns ``last``."""

    def __init__(self, chunks: Iterable[bytes], last: object = 0) -> None:
        self.chunks, self.last = list(chunks), last

    def readinto(self, buffer: memoryview) -> Any:
        if self.chunks:
            data = self.chunks.pop(0)
            buffer[: len(data)] = data
            return len(data)
        return self.last


def hostile(body: Callable[[Secret], None]) -> None:
    """Run ``body(keep)`` between a snapshot and the leak check; print ``clean``."""
    keep = Secret.from_bytes(b"keep")
    before = snapshot()
    body(keep)
    assert_clean(before)
    say("clean")


class IndexThree:
    def __index__(self) -> int:
        return 3


WRONG_RESULTS: dict[str, Callable[[], object]] = {
    "None": lambda: None,
    "'7'": lambda: "7",
    "7.0": lambda: 7.0,
    "True": lambda: True,
    "-1": lambda: -1,
    "10**6": lambda: 10**6,
    "I()": lambda: type("I", (IndexThree,), {})(),
}


def case_readinto_returning_the_wrong_thing() -> None:
    last = WRONG_RESULTS[params()["result"]]()

    def body(keep: Secret) -> None:
        try:
            Secret.from_stream(Reader([b"abc"], last=last))
        except StreamError as exc:
            say("StreamError", exc)

    hostile(body)


def case_reader_that_raises_midway() -> None:
    class Boom(Exception):
        pass

    class R:
        def __init__(self, exc_type: type[BaseException]) -> None:
            self.n, self.exc_type = 0, exc_type

        def readinto(self, buffer: memoryview) -> int:
            self.n += 1
            if self.n == 3:  # after the secret has grown once
                raise self.exc_type("disk on fire")
            buffer[:4096] = b"s" * 4096
            return 4096

    def body(keep: Secret) -> None:
        for exc_type in (Boom, KeyboardInterrupt, MemoryError):
            try:
                Secret.from_stream(R(exc_type))
            except exc_type:
                say("raised", exc_type.__name__)

    hostile(body)


def case_reader_that_keeps_the_buffer() -> None:
    kept: list[memoryview] = []

    class R:
        def readinto(self, buffer: memoryview) -> int:
            kept.append(buffer[:])
            buffer[:3] = b"abc"
            return 3

    def body(keep: Secret) -> None:
        try:
            Secret.from_stream(R())
        except StreamError as exc:
            say("StreamError", "kept the memoryview" in str(exc))
        kept.clear()

    hostile(body)


def case_endless_stream_stops_at_max_size() -> None:
    class Endless:
        def readinto(self, buffer: memoryview) -> int:
            buffer[:] = b"z" * buffer.nbytes
            return buffer.nbytes

    def body(keep: Secret) -> None:
        for limit in (1, 4096, 3 * 4096 + 1, 1 << 20):
            try:
                Secret.from_stream(Endless(), max_size=limit)
            except StreamError:
                say("stopped", limit)

    hostile(body)


def case_reader_that_closes_and_reveals_other_secrets() -> None:
    def body(keep: Secret) -> None:
        other = Secret.from_bytes(b"other")

        class R:
            n = 0

            def readinto(self, buffer: memoryview) -> int:
                self.n += 1
                if self.n > 1:
                    return 0
                try:
                    with other.reveal():
                        say("revealed inside readinto")
                except GuardStateError:
                    say("refused")
                other.close()
                buffer[:2] = b"ok"
                return 2

        s = Secret.from_stream(R())
        with s.reveal() as b:
            say(bytes(b), other.closed)
        s.close()

    hostile(body)


def case_fork_inside_readinto() -> None:
    class R:
        n = 0

        def readinto(self, buffer: memoryview) -> int:
            self.n += 1
            if self.n == 1:
                buffer[:3] = b"abc"
                return 3
            if self.n == 2:
                pid = os.fork()
                if pid:
                    os.waitpid(pid, 0)
                buffer[:3] = b"def"
                return 3
            return 0

    def body(keep: Secret) -> None:
        try:
            s = Secret.from_stream(R())
        except SecretUnavailableError:
            keep.close()
            os._exit(0)  # the child
        with s.reveal() as b:
            say(bytes(b))
        s.close()

    hostile(body)


def case_signal_while_blocked_on_an_empty_pipe() -> None:
    def interrupt(*a: object) -> None:
        raise KeyboardInterrupt

    def body(keep: Secret) -> None:
        r, w = os.pipe()
        os.write(w, b"partial")
        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            Secret.from_fd(r)
        except KeyboardInterrupt:
            say("interrupted")
        os.close(r)
        os.close(w)

    hostile(body)


def case_nonblocking_descriptor_with_no_data() -> None:
    def body(keep: Secret) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        try:
            Secret.from_fd(r)
        except BlockingIOError:
            say("BlockingIOError")
        os.close(r)
        os.close(w)

    hostile(body)


def case_two_threads_read_one_pipe() -> None:
    def body(keep: Secret) -> None:
        r, w = os.pipe()
        got: list[int] = []

        def reader() -> None:
            try:
                s = Secret.from_fd(r, max_size=1 << 22)
                with s.reveal() as b:
                    got.append(len(b))
                s.close()
            except RegionError:  # the other thread got everything
                got.append(0)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(64):
            os.write(w, b"q" * 4096)
        os.close(w)
        for t in threads:
            t.join()
        os.close(r)
        say("total", sum(got))

    hostile(body)


def case_daemon_thread_reading_at_interpreter_exit() -> None:
    r, w = os.pipe()
    os.write(w, b"half a secret")
    threading.Thread(target=lambda: Secret.from_fd(r), daemon=True).start()
    time.sleep(0.2)
    say("exiting")


def case_stdin() -> None:
    """A secret from this process's stdin: ``params()["how"]`` is ``file`` (/dev/stdin) or
    ``fd`` (descriptor 0)."""
    if params()["how"] == "file":
        a = Secret.from_file("/dev/stdin", name="stdin")
    else:
        a = Secret.from_fd(0, name="stdin")
    say(len(a), a.equals(b"piped secret\n"))


def case_prompt() -> None:
    s: Secret | None
    try:
        s = Secret.from_prompt("Key: ")
    except BaseException as exc:
        say("ERR", type(exc).__name__, exc)
        s = None
    if sys.stdin.isatty():
        say("ECHO", bool(termios.tcgetattr(0)[3] & termios.ECHO))
    if s is None:
        sys.exit(3)
    say("LEN", len(s), "MAC", s.hmac(b"m").hex())
