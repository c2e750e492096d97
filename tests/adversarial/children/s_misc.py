"""Trickling streams, from_prompt on a pty, exit with daemons, drop inside reveal (the child
programs of ``test_s06_misc.py``)."""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import hmac
import os
import pty
import select
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from pkeyguard import Secret, allocator
from tests.adversarial.childlib import params, wait_until
from tests.childhelpers import say


def case_from_prompt_on_a_pty() -> None:
    """``params()["mode"]``: what is typed at the prompt (``ok``, ``long``, ``sigint``,
    ``empty``).  Prints everything the terminal showed."""
    mode = params()["mode"]
    pid, master = pty.fork()
    if pid == 0:
        fd = os.open("/dev/tty", os.O_RDWR)

        def echo() -> bool:
            return bool(termios.tcgetattr(fd)[3] & termios.ECHO)

        try:
            kwargs: dict[str, Any] = {"max_size": 8} if mode == "long" else {}
            s = Secret.from_prompt("Pw: ", **kwargs)
            say("GOT", len(s), s.equals(b"hunter2"))
        except BaseException as e:
            say("RAISED", type(e).__name__)
        say("ECHO", echo())
        os._exit(0)

    def rd(t: float) -> bytes:
        out = b""
        end = time.time() + t
        while time.time() < end:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    out += os.read(master, 1000)
                except OSError:
                    break
        return out

    out = rd(1.5)
    typed = {
        "ok": b"hunter2\n",
        "long": b"0123456789ABCDEF\n",
        "sigint": b"\x03",
        "empty": b"\n",
    }[mode]
    os.write(master, typed)
    out += rd(2.0)
    os.waitpid(pid, 0)
    say(out.decode(errors="replace"))


def case_interpreter_exit_with_daemons_using_secrets() -> None:
    """Two daemon threads in ``params()["mode"]`` (reveal, hmac, stream, fd, churn) when the
    interpreter exits."""
    faulthandler.cancel_dump_traceback_later()
    mode = params()["mode"]
    s = Secret.from_bytes(bytearray(os.urandom(64)))
    started = threading.Event()

    def d_reveal() -> None:
        started.set()
        while True:
            with s.reveal() as v:
                hmac.digest(v, b"m" * 1000, "sha256")
                bytes(v)

    def d_hmac() -> None:
        started.set()
        while True:
            s.hmac(b"m")

    class Slow:
        def readinto(self, b: memoryview) -> int:
            started.set()
            while True:
                b[:] = b"x" * len(b)
                time.sleep(0)

    def d_stream() -> None:
        Secret.from_stream(Slow(), max_size=None)

    def d_fd() -> None:
        r, w = os.pipe()
        os.write(w, b"partial")
        started.set()
        Secret.from_fd(r)

    def d_churn() -> None:
        started.set()
        while True:
            x = Secret.from_bytes(b"k" * 100)
            x.hmac(b"m")
            x.close()

    targets: dict[str, Callable[[], None]] = {
        "reveal": d_reveal,
        "hmac": d_hmac,
        "stream": d_stream,
        "fd": d_fd,
        "churn": d_churn,
    }
    for _ in range(2):
        threading.Thread(target=targets[mode], daemon=True).start()
    started.wait()
    time.sleep(0.02)


def case_dropped_inside_reveal_is_wiped_when_the_block_ends() -> None:
    b: allocator.Backing = params()["backing"]
    seen: list[bytes] = []

    def hook(a: int, n: int) -> None:
        seen.append(ctypes.string_at(a, 16))

    s1 = Secret(16, allocator=allocator.Secure(backing=b, on_before_unmap=hook))
    s1.write(0, b"X" * 16)
    cm: Any = s1.reveal()
    v = cm.__enter__()
    del s1
    gc.collect()
    assert seen == [], seen
    cm.__exit__(None, None, None)
    del v, cm
    gc.collect()
    assert seen == [bytes(16)], seen
    seen.clear()
    held = [Secret(16, allocator=allocator.Secure(backing=b, on_before_unmap=hook))]
    held[0].write(0, b"Y" * 16)
    box: list[object] = []

    def th() -> None:
        cm = held[0].reveal()
        cm.__enter__()
        box.append(cm)

    t = threading.Thread(target=th)
    t.start()
    t.join()
    held.clear()
    box.clear()
    assert wait_until(lambda: bool((gc.collect(), seen)[1]), 3), seen
    assert seen == [bytes(16)], seen
