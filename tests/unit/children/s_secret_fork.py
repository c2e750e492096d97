"""Child programs of ``tests/unit/test_secret_fork.py``: secrets and fork(), on the backing
``params()["backing"]``.  A fork child leaves with ``os._exit`` and its status says what it
found; the parent prints what the test compares."""

from __future__ import annotations

import ctypes
import faulthandler
import hmac
import multiprocessing as mp
import os
import sys
from collections.abc import Callable

from pkeyguard import Secret, SecretUnavailableError, allocator
from tests.adversarial.childlib import params, wait_until
from tests.childhelpers import say
from tests.support import proc_mem_read


def backing() -> allocator.Backing:
    b = str(params()["backing"])
    assert b in ("memfd_secret", "mmap")
    return b  # type: ignore[return-value]


def make(data: bytes = b"hunter2-hunter2") -> Secret:
    s = Secret(len(data), allocator=allocator.Secure(backing=backing()))
    s.write(0, data)
    assert s.backing == backing(), s.backing
    return s


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def case_os_fork_child_gets_a_clear_error_and_no_bytes() -> None:
    s = make()
    pid = os.fork()
    if pid == 0:
        code = 0
        uses: tuple[Callable[[], object], ...] = (
            lambda: s.reveal().__enter__(),
            lambda: s.equals(b"x"),
            lambda: s.write(0, b"x"),
        )
        for use in uses:
            try:
                use()
                code = 1
            except SecretUnavailableError as exc:
                if "forked" not in str(exc):
                    code = 2
        if "inherited" not in repr(s) or len(s) != 15:
            code = 3
        if proc_mem_read(s.address, 15) != bytes(15):  # zero pages, not the parent's bytes
            code = 4
        s.close()  # no CanaryError: nothing overflowed
        s.close()
        mine = make(b"child's own")  # a secret made in the child works
        with mine.reveal() as buf:
            code = code or (bytes(buf) != b"child's own") * 5
        os._exit(code)
    say("child", wait(pid))
    with s.reveal() as buf:
        say("parent", bytes(buf))
    s.close()


def case_child_that_exits_normally() -> None:
    # The runner's watchdog does not survive fork: a child that exits normally would hang
    # in it (dump_traceback_later), so it is cancelled before the fork.
    faulthandler.cancel_dump_traceback_later()
    s = make()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # atexit: secrets still open are wiped -- in the child
    say("child", wait(pid))
    with s.reveal() as buf:
        say("parent", bytes(buf))
    s.close()  # the parent's canary is intact
    say("closed")


def case_no_false_canary_error_when_a_pid_comes_back() -> None:
    # unshare(CLONE_NEWUSER) wants a process of one thread: no runner's watchdog thread.
    faulthandler.cancel_dump_traceback_later()
    assert wait_until(lambda: len(os.listdir("/proc/self/task")) == 1)
    clone_newuser, clone_newpid = 0x10000000, 0x20000000
    libc = ctypes.CDLL(None, use_errno=True)
    # root may make a pid namespace as it is; others own a user namespace first (root cannot
    # always: not in a chroot, as in the PKU guest)
    flags = clone_newpid if os.geteuid() == 0 else clone_newuser | clone_newpid
    assert libc.unshare(flags) == 0, os.strerror(ctypes.get_errno())
    first = os.fork()
    if first == 0:  # pid 1 here: makes the secret
        s = make()
        child = os.fork()
        if child == 0:
            if libc.unshare(clone_newpid) != 0:  # capable here: root, or owner of the namespace
                os._exit(90)
            grandchild = os.fork()  # pid 1 again, in the nested namespace
            if grandchild == 0:
                assert os.getpid() == 1
                try:
                    s.close()
                except Exception as exc:
                    say("grandchild", type(exc).__name__)
                    os._exit(1)
                os._exit(0)
            os._exit(wait(grandchild))
        code = wait(child)
        s.close()
        os._exit(code)
    say("result", wait(first))


SHARED: list[Secret] = []  # the secret the multiprocessing case's functions use


def use() -> bytes:
    with SHARED[0].reveal() as buf:
        return bytes(buf)


def report() -> None:
    try:
        use()
    except SecretUnavailableError:
        sys.exit(7)


def case_multiprocessing_fork_context() -> None:
    SHARED.append(make())
    ctx = mp.get_context("fork")
    p = ctx.Process(target=report)
    p.start()
    p.join()
    say("process", p.exitcode)
    with ctx.Pool(1) as pool:
        try:
            pool.apply(use)
            say("pool: no error")
        except SecretUnavailableError as exc:
            say("pool", type(exc).__name__)
    say("parent", use())
    SHARED.pop().close()


def case_fork_inside_reveal() -> None:
    s = make()
    with s.reveal() as buf:
        pid = os.fork()
        if pid == 0:
            refused = 0
            uses: tuple[Callable[[], object], ...] = (
                lambda: bytes(buf),
                lambda: hmac.digest(buf, b"m", "sha256"),
            )
            for u in uses:
                try:
                    u()
                except SecretUnavailableError:
                    refused += 1
            os._exit(0 if refused == 2 else 1)
        say("child", wait(pid))
        say("parent", bytes(buf))
    s.close()


def case_memfd_secret_pages_are_not_shared_with_the_child() -> None:
    s = make()
    pid = os.fork()
    if pid == 0:
        fd = os.open("/proc/self/mem", os.O_RDWR)
        os.pwrite(fd, b"X" * 15, s.address)  # scribble over the child's pages
        s.close()
        os._exit(0)
    say("child", wait(pid))
    with s.reveal() as buf:
        say("parent", bytes(buf))
    s.close()
