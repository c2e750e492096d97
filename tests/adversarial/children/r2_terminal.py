"""Issue 18, class 12: the terminal state of ``Secret.from_prompt`` survives a Ctrl-C anywhere.

The child makes itself a session leader with a pty as its controlling terminal (so
``/dev/tty`` is that pty), then calls ``from_prompt`` hundreds of times, each with one
KeyboardInterrupt at a random moment (``setitimer``; SIGALRM runs ``signal.default_int_handler``,
SIGINT's own handler).  After every call: echo must be on again, and no descriptor of the
terminal left open.  The case counts both, and the interrupts that landed.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pty
import random
import select
import signal
import statistics
import termios
import threading
import time
from typing import Any

from pkeyguard import PkeyguardError, Secret
from tests.adversarial.childlib import params


def _controlling_pty() -> tuple[int, int]:
    """A new session whose controlling terminal is a new pty: (master, slave)."""
    os.setsid()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return master, slave


def _echo_on(fd: int) -> bool:
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def _tty_fds(pts: str) -> set[int]:
    """The descriptors of this process open on ``pts``, by its name or as /dev/tty."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") in (pts, "/dev/tty"):
                found.add(int(name))
        except OSError:
            pass
    return found


class _Terminal:
    """The other side: types a password line every ~0.2 ms and reads whatever is echoed."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.stop = False
        self.threads = [
            threading.Thread(target=self._type, daemon=True),
            threading.Thread(target=self._drain, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _type(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # for the main thread
        while not self.stop:
            try:
                os.write(self.master, b"hunter2\n")
            except OSError:
                return
            time.sleep(0.0002)

    def _drain(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        while not self.stop:
            if poller.poll(50):
                try:
                    os.read(self.master, 65536)
                except OSError:
                    return

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(5)


def case_prompt_under_random_interrupts() -> None:
    p = params()
    rng = random.Random(p["seed"])
    master, slave = _controlling_pty()
    pts = os.ttyname(slave)
    own = _tty_fds(pts)  # the slave descriptor this case holds
    terminal = _Terminal(master)
    old_handler = signal.signal(signal.SIGALRM, signal.default_int_handler)
    echo_off = leaked = interrupted = completed = 0
    wrong: list[str] = []
    try:
        # How long one call takes here, to spread the interrupts over it.
        durations = []
        for _ in range(20):
            t0 = time.perf_counter()
            Secret.from_prompt("pw: ").close()
            durations.append(time.perf_counter() - t0)
        span = statistics.median(durations) * 1.5
        for i in range(p["rounds"]):
            # half spread over the call, half packed at its start (where the descriptor is
            # opened and echo turned off)
            at = span * (rng.random() if i % 2 else rng.random() ** 3)
            done = False
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, 1e-6 + at)
                    Secret.from_prompt("pw: ").close()
                    done = True
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    # a signal that came just before the timer was stopped: its handler now
                    signal.pthread_sigmask(signal.SIG_BLOCK, ())
            except KeyboardInterrupt:
                interrupted += 1
            except PkeyguardError as exc:  # a Ctrl-C must come out as KeyboardInterrupt
                wrong.append(repr(exc))
            else:
                completed += done
            if not _echo_on(slave):
                echo_off += 1
                attrs = termios.tcgetattr(slave)
                attrs[3] |= termios.ECHO
                termios.tcsetattr(slave, termios.TCSANOW, attrs)
            extra = _tty_fds(pts) - own
            if extra:
                gc.collect()  # an fd held by a garbage object is not a leak
                extra = _tty_fds(pts) - own
            leaked += len(extra)
            for fd in extra:
                os.close(fd)
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        terminal.close()
    print(
        f"{p['rounds']} calls: {interrupted} interrupted, {completed} completed; "
        f"echo left off {echo_off} times, {leaked} terminal descriptors leaked; "
        f"{len(wrong)} other errors"
    )
    assert interrupted > 0, "no KeyboardInterrupt landed in from_prompt"
    assert completed > 0, "no call completed: the interrupts came too early to test the end"
    assert echo_off == 0 and leaked == 0, (
        f"echo left off {echo_off} times, {leaked} terminal descriptors leaked"
    )
    assert not wrong, f"an interrupted from_prompt raised {wrong[0]} instead"


def case_quiet_terminal_used_by_hand() -> None:
    """The C object behind from_prompt, used out of order: entered twice, exited twice,
    dropped while entered (echo comes back, the descriptor closes), made with arguments."""
    from pkeyguard._terminal import QuietTerminal

    _, slave = _controlling_pty()  # both left open: closing the master hangs the session up
    pts = os.ttyname(slave)
    own = _tty_fds(pts)
    t = QuietTerminal()
    fd = t.__enter__()
    assert not _echo_on(slave) and fd in _tty_fds(pts), "echo is not off"
    try:
        t.__enter__()
    except RuntimeError:
        pass
    else:
        raise AssertionError("a QuietTerminal was entered twice")
    del t  # never exited: the deallocation restores
    gc.collect()
    assert _echo_on(slave), "a dropped QuietTerminal left echo off"
    assert _tty_fds(pts) == own, "a dropped QuietTerminal left its descriptor open"
    t = QuietTerminal()
    t.__exit__(None, None, None)  # exit before entry: nothing to do
    with t:
        assert not _echo_on(slave) and not t.closed
    assert _echo_on(slave) and t.closed and _tty_fds(pts) == own
    t.__exit__(None, None, None)  # twice: nothing more
    extra: tuple[Any, ...] = (1,)
    try:
        QuietTerminal(*extra)
    except TypeError:
        pass
    else:
        raise AssertionError("QuietTerminal took an argument")
