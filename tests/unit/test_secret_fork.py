"""Secrets and fork(): a child never gets a parent's secret bytes, says so clearly, and
never reports a canary overflow that did not happen.

Every case runs in a child interpreter (a signal, a hang or an unexpected line fails it), on
both backings of secret memory.
"""

from __future__ import annotations

import pytest

from tests.support import run_child

BACKINGS = ["memfd_secret", "mmap"]

PRELUDE = """
import ctypes, os, sys
from pkeyguard import Secret, SecretUnavailableError, allocator

def make(data=b"hunter2-hunter2"):
    s = Secret(len(data), allocator=allocator.Secure(backing=BACKING))
    s.write(0, data)
    assert s.backing == BACKING, s.backing
    return s

def proc_mem(address, n):
    # what this process's memory holds there, whatever the page rights
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        return os.pread(fd, n, address)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)

def wait(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
"""


def run(code: str, backing: str) -> tuple[str, str]:
    child = run_child(f"BACKING = {backing!r}\n{PRELUDE}\n{code}")
    assert child.returncode == 0, child
    assert "Traceback" not in child.stderr and "Exception ignored" not in child.stderr, child
    return child.stdout, child.stderr


@pytest.mark.parametrize("backing", BACKINGS)
def test_os_fork_child_gets_a_clear_error_and_no_bytes(backing: str) -> None:
    out, _ = run(
        """
s = make()
pid = os.fork()
if pid == 0:
    code = 0
    for use in (lambda: s.reveal().__enter__(), lambda: s.equals(b"x"),
                lambda: s.write(0, b"x")):
        try:
            use()
            code = 1
        except SecretUnavailableError as exc:
            if "forked" not in str(exc):
                code = 2
    if "inherited" not in repr(s) or len(s) != 15:
        code = 3
    if proc_mem(s.address, 15) != bytes(15):      # zero pages, not the parent's bytes
        code = 4
    s.close()                                      # no CanaryError: nothing overflowed
    s.close()
    mine = make(b"child's own")                    # a secret made in the child works
    with mine.reveal() as buf:
        code = code or (bytes(buf) != b"child's own") * 5
    os._exit(code)
print("child", wait(pid))
with s.reveal() as buf:
    print("parent", bytes(buf))
s.close()
""",
        backing,
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_child_that_exits_normally_leaves_the_parent_intact(backing: str) -> None:
    """The child's interpreter exit (atexit wipe, collection) touches only its own pages."""
    out, _ = run(
        """
s = make()
pid = os.fork()
if pid == 0:
    sys.exit(0)           # atexit: secrets still open are wiped -- in the child
print("child", wait(pid))
with s.reveal() as buf:
    print("parent", bytes(buf))
s.close()                 # the parent's canary is intact
print("closed")
""",
        backing,
    )
    assert out.split() == ["child", "0", "parent", "b'hunter2-hunter2'", "closed"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_no_false_canary_error_when_a_pid_comes_back(backing: str) -> None:
    """A pid is no proof of identity: pids are reused, and a pid namespace counts from 1
    again.  Here the secret is made by pid 1 of a namespace (a container's entry point) and
    closed, in a grandchild, by pid 1 of a nested one.  The old check (`pid != getpid()`)
    took the grandchild's zero pages for the maker's and raised CanaryError."""
    out, _ = run(
        """
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
libc = ctypes.CDLL(None, use_errno=True)
# root may make a pid namespace as it is; others own a user namespace first (root cannot
# always: not in a chroot, as in the PKU guest)
flags = CLONE_NEWPID if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWPID
assert libc.unshare(flags) == 0, os.strerror(ctypes.get_errno())
first = os.fork()
if first == 0:                       # pid 1 here: makes the secret
    s = make()
    child = os.fork()
    if child == 0:
        if libc.unshare(CLONE_NEWPID) != 0:  # capable here: root, or owner of the namespace
            os._exit(90)
        grandchild = os.fork()       # pid 1 again, in the nested namespace
        if grandchild == 0:
            assert os.getpid() == 1
            try:
                s.close()
            except Exception as exc:
                print("grandchild", type(exc).__name__, flush=True)
                os._exit(1)
            os._exit(0)
        os._exit(wait(grandchild))
    code = wait(child)
    s.close()
    os._exit(code)
print("result", wait(first))
""",
        backing,
    )
    assert out.strip() == "result 0", out


@pytest.mark.parametrize("backing", BACKINGS)
def test_multiprocessing_fork_context(backing: str) -> None:
    out, err = run(
        """
import multiprocessing as mp

s = make()

def use():
    with s.reveal() as buf:
        return bytes(buf)

def report():
    try:
        use()
    except SecretUnavailableError:
        sys.exit(7)

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    p = ctx.Process(target=report)
    p.start(); p.join()
    print("process", p.exitcode)
    with ctx.Pool(1) as pool:
        try:
            pool.apply(use)
            print("pool: no error")
        except SecretUnavailableError as exc:
            print("pool", type(exc).__name__)
    print("parent", use())
    s.close()
""",
        backing,
    )
    assert out.split("\n")[:3] == [
        "process 7",
        "pool SecretUnavailableError",
        "parent b'hunter2-hunter2'",
    ], (out, err)


@pytest.mark.parametrize("backing", BACKINGS)
def test_fork_inside_reveal(backing: str) -> None:
    """The forking thread's reveal() stays active in the child, over zero pages: the child
    can leave the block, but its view refuses to be read (it would read zeros as if they were
    the secret: an HMAC with an all-zero key), as a buffer export too."""
    out, _ = run(
        """
import hmac
from pkeyguard import SecretUnavailableError
s = make()
with s.reveal() as buf:
    pid = os.fork()
    if pid == 0:
        refused = 0
        for use in (lambda: bytes(buf), lambda: hmac.digest(buf, b"m", "sha256")):
            try:
                use()
            except SecretUnavailableError:
                refused += 1
        os._exit(0 if refused == 2 else 1)
    print("child", wait(pid))
    print("parent", bytes(buf))
s.close()
""",
        backing,
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]


def test_memfd_secret_pages_are_not_shared_with_the_child() -> None:
    """A shared mapping would give the child the parent's pages: it could read them, and its
    close() would zero the parent's secret (whose own close() would then report an overflow
    that never happened)."""
    out, _ = run(
        """
s = make()
pid = os.fork()
if pid == 0:
    fd = os.open("/proc/self/mem", os.O_RDWR)
    os.pwrite(fd, b"X" * 15, s.address)    # scribble over the child's pages
    s.close()
    os._exit(0)
print("child", wait(pid))
with s.reveal() as buf:
    print("parent", bytes(buf))
s.close()
""",
        "memfd_secret",
    )
    assert out.split("\n")[:2] == ["child 0", "parent b'hunter2-hunter2'"]
