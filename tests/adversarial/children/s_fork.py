"""fork: every use of an inherited Secret must raise SecretUnavailableError (the child
programs of ``test_s01_fork.py``; README "fork, spawn and multiprocessing").

The runner's faulthandler watchdog makes a fork child that exits *normally* hang (CPython:
dump_traceback_later does not survive fork), so fork children leave with os._exit."""

from __future__ import annotations

import copy
import faulthandler
import functools
import hmac
import multiprocessing as mp
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pkeyguard import Secret, SecretUnavailableError, allocator
from tests.adversarial.childlib import params, raises
from tests.childhelpers import say


def backing() -> allocator.Backing:
    b = str(params()["backing"])
    assert b in ("memfd_secret", "mmap")
    return b  # type: ignore[return-value]


def case_fork_inside_reveal_child_view_must_not_read_zeros() -> None:
    s = Secret(8, allocator=allocator.Secure(backing=backing()))
    s.write(0, b"PARENTSK")
    r, w = os.pipe()
    with s.reveal() as key:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                tag = hmac.digest(key, b"msg", "sha256")
                zero = hmac.digest(bytes(8), b"msg", "sha256")
                res = "silent-zero-key" if tag == zero else "other:" + tag.hex()
            except SecretUnavailableError:
                res = "refused"
            except BaseException as e:
                res = "raised " + type(e).__name__
            os.write(w, res.encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        res = os.read(r, 200).decode()
    say("child:", res)
    assert res == "refused", f"fork child used the inherited revealed view: {res}"


def case_every_method_in_fork_child() -> None:
    s = Secret(8, allocator=allocator.Secure(backing=backing()))
    s.write(0, b"PARENTSK")
    ops: dict[str, Callable[[], object]] = {
        "reveal": lambda: s.reveal().__enter__(),
        "equals": lambda: s.equals(b"\0" * 8),
        "hmac": lambda: s.hmac(b"m"),
        "write": lambda: s.write(0, b"x"),
        "with": lambda: s.__enter__(),
    }
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = []
        for name, op in ops.items():
            try:
                op()
                out.append(name + ":no-error")
            except SecretUnavailableError:
                pass
            except BaseException as e:
                out.append(name + ":" + type(e).__name__)
        len(s)
        repr(s)
        copiers: tuple[Callable[[Secret], object], ...] = (copy.copy, pickle.dumps)
        for f in copiers:
            try:
                f(s)
                out.append("copied")
            except TypeError:
                pass
        s.close()
        s.close()
        os.write(w, ",".join(out).encode() or b"ok")
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    res = os.read(r, 500).decode()
    assert res == "ok", res
    with s.reveal() as v:
        assert bytes(v) == b"PARENTSK"
    s.close()


def case_fork_during_from_stream_from_writer_from_chunks() -> None:
    state: dict[str, int] = {}

    def in_child(fn: Callable[[], object]) -> str:
        try:
            fn()
            return "no-error"
        except SecretUnavailableError:
            return "refused"

    class R:
        n = 0

        def readinto(self, b: Any) -> int:
            self.n += 1
            if self.n == 1:
                b[:4] = b"ABCD"
                return 4
            if self.n == 2:
                state["pid"] = os.fork()
                b[:4] = b"EFGH"
                return 4
            return 0

    for kind in ("stream", "writer", "chunks"):
        state.clear()

        def make(kind: str = kind) -> Secret:
            if kind == "stream":
                return Secret.from_stream(R())
            if kind == "writer":

                def wr(b: Any) -> None:
                    b[:4] = b"WWWW"
                    state["pid"] = os.fork()

                return Secret.from_writer(4, wr)

            def gen() -> Iterator[bytes]:
                yield b"1234"
                state["pid"] = os.fork()
                yield b"5678"

            return Secret.from_chunks(gen())

        s: Secret | None
        try:
            s = make()
            res = "made"
        except SecretUnavailableError:
            s = None
            res = "refused"
        except BaseException:
            if state.get("pid") == 0:
                os._exit(4)
            raise
        if state["pid"] == 0:
            if s is not None:
                res = in_child(functools.partial(s.hmac, b"m"))
            os._exit(0 if res == "refused" else 3)
        _, st = os.waitpid(state["pid"], 0)
        assert st == 0, (kind, st)
        assert s is not None and len(s) in (4, 8)
        s.close()


POOL_SECRET: list[Secret] = []


def use(m: bytes) -> bytes:
    """Runs in the fork pool's worker: the inherited secret must be unavailable there."""
    return POOL_SECRET[0].hmac(m)


def case_multiprocessing_fork_pool_gets_the_error() -> None:
    POOL_SECRET.append(Secret.from_bytes(bytearray(b"PARENTSK")))
    faulthandler.cancel_dump_traceback_later()
    with mp.get_context("fork").Pool(1) as p:
        raises(SecretUnavailableError, p.apply, use, (b"m",))
    assert len(POOL_SECRET[0].hmac(b"m")) == 32


def case_fork_inside_hmac_msg_buffer() -> None:
    """Secret.hmac(msg) reveals the key, then hmac.digest converts msg; a msg whose
    __buffer__ (3.12+) forks makes the child finish the HMAC.  Prints what each side got."""
    s = Secret.from_bytes(bytearray(b"PARENTSK"))

    class ForkingMsg:
        pid: int | None = None

        def __buffer__(self, flags: int) -> memoryview:
            ForkingMsg.pid = os.fork()
            return memoryview(b"msg")

    try:
        tag = s.hmac(ForkingMsg())  # type: ignore[arg-type]  # a buffer on 3.12+ only
        zero = hmac.digest(bytes(8), b"msg", "sha256")
        real = hmac.digest(b"PARENTSK", b"msg", "sha256")
        res = "ZERO-KEY" if tag == zero else "real" if tag == real else "other"
    except SecretUnavailableError:
        res = "refused"
    if ForkingMsg.pid == 0:
        say("child", res)
        os._exit(0)
    assert ForkingMsg.pid is not None
    os.waitpid(ForkingMsg.pid, 0)
    say("parent", res)


def case_fork_from_a_thread_and_grandchildren() -> None:
    a = Secret.from_bytes(bytearray(b"A" * 8))

    def st(s: Secret) -> str:
        try:
            s.hmac(b"m")
            return "ok"
        except SecretUnavailableError:
            return "unavail"

    r, w = os.pipe()

    def thr() -> None:
        pid = os.fork()
        if pid == 0:
            b = Secret.from_bytes(bytearray(b"B" * 8))
            g = os.fork()
            if g == 0:
                res = f"g:{st(a)},{st(b)}"
                a.close()
                b.close()
                os.write(w, res.encode() + b";")
                os._exit(0)
            os.waitpid(g, 0)
            res = f"c:{st(a)},{st(b)}"
            b.close()
            a.close()
            os.write(w, res.encode() + b";")
            os._exit(0)
        os.waitpid(pid, 0)

    t = threading.Thread(target=thr)
    t.start()
    t.join()
    os.close(w)
    res = os.read(r, 100).decode()
    assert res == "g:unavail,unavail;c:unavail,ok;", res
    assert st(a) == "ok"
    a.close()
