"""A child made by a raw clone() (no pthread_atfork handlers run): the child programs of
``test_s04_raw_clone.py``."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import mmap
import os
import signal

from pkeyguard import PkeyguardError, Secret, allocator
from tests.childhelpers import say


def make() -> tuple[ctypes.CDLL, Secret]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    s = Secret(16, allocator=allocator.Secure(backing="memfd_secret"))
    s.write(0, b"P" * 16)
    return libc, s


def raw_clone(libc: ctypes.CDLL) -> int:
    faulthandler.cancel_dump_traceback_later()
    return int(libc.syscall(56, signal.SIGCHLD, 0, 0, 0, 0))  # clone(SIGCHLD): no handlers


def case_raw_clone_child_close_unmaps_the_childs_own_memory() -> None:
    libc, s = make()
    pid = raw_clone(libc)
    if pid == 0:
        hit = None
        keep = []
        for _ in range(64):
            m = mmap.mmap(-1, 4096)
            keep.append(m)
            with open("/proc/self/maps") as f:
                f.read()
            c = ctypes.c_char.from_buffer(m)
            addr = ctypes.addressof(c)
            del c
            if addr == s.address:
                hit = m
                break
        if hit is None:
            os._exit(7)  # nothing landed in the hole: inconclusive
        hit[:14] = b"CHILD-OWN-DATA"
        with contextlib.suppress(PkeyguardError):
            s.close()
        ok = hit[:14] == b"CHILD-OWN-DATA"  # SIGSEGV here if close unmapped the child's page
        os._exit(0 if ok else 5)
    _, st = os.waitpid(pid, 0)
    assert st != 7 << 8, "inconclusive: no mapping landed in the hole"
    assert not os.WIFSIGNALED(st), (
        f"raw-clone child killed by signal {os.WTERMSIG(st)} after closing the inherited secret"
    )
    assert st == 0, f"child's own memory changed by the inherited secret's close (status {st})"
    with s.reveal() as v:
        assert bytes(v) == b"P" * 16


def case_raw_clone_child_close_works() -> None:
    libc, s = make()
    r, w = os.pipe()
    pid = raw_clone(libc)
    if pid == 0:
        try:
            s.close()
            res = "ok"
        except BaseException as e:
            res = f"{type(e).__name__}: {e}"
        os.write(w, res.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    res = os.read(r, 300).decode()
    say("child close:", res)
    assert res == "ok", res
