"""Issue 18, class 6: a fork during a release leaves the child consistent.

A secure region's release is native code under the GIL except for one step that runs Python
code: the ``on_before_unmap`` test hook, after the bytes are gone and before the pages are
unmapped.  A fork there (``os.fork``, or a raw clone(2) without fork handlers) gets a child
that runs the rest of the release.  Secret memory is MADV_DONTFORK, so the child has a hole at
the region's address: before the fix the child's next mapping could land in that hole, and
the child's copy of the release then unmapped it (a valid write into it died).  Now the child
gets zero pages there (its own copy, which its release unmaps), or, after a raw clone, its
release leaves the address alone."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal

from pkeyguard import Secret, allocator
from tests.adversarial.childlib import params

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.syscall.restype = ctypes.c_long
MAP_FIXED_NOREPLACE = 0x100000
SYS_CLONE = 56
MARK = b"child's own mapping"


def mapped(address: int) -> str | None:
    """The rights of the mapping that holds ``address`` in this process, or None."""
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return perms
    return None


def child_after_fork(hole: int, length: int, release: dict[str, object]) -> None:
    """In the child, inside the hook: map something of its own where the region is, if the
    address is free (the child's next mapping landing there)."""
    p = _libc.mmap(
        hole,
        length,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
        -1,
        0,
    )
    if p == hole:
        ctypes.memmove(hole, MARK, len(MARK))
        release["own"] = hole
    elif p not in (None, ctypes.c_void_p(-1).value):  # a kernel that took it as a hint
        _libc.munmap(ctypes.c_void_p(p), ctypes.c_size_t(length))


def finish_child(release: dict[str, object], region: Secret) -> None:
    """In the child, after its release returned: what it mapped is still there, the region's
    address holds nothing of the region, and new secure memory works."""
    region.close()  # a second close is a no-op
    own = release.get("own")
    if isinstance(own, int):
        # the mapping the child made in the hole must survive the child's release
        assert mapped(own) is not None, "the child's release unmapped the child's own mapping"
        assert ctypes.string_at(own, len(MARK)) == MARK
    else:
        assert mapped(int(release["address"])) is None, "the child's copy stayed mapped"  # type: ignore[call-overload]
    s = Secret(14, allocator=allocator.Secure(backing=params()["backing"]))
    s.write(0, b"after the fork")
    with s.reveal() as view:
        assert bytes(view) == b"after the fork"
    s.close()


def case_fork_in_the_hook() -> None:
    how = params()["how"]
    release: dict[str, object] = {}

    def hook(address: int, length: int) -> None:
        release["address"] = address
        assert ctypes.string_at(address, 16) == bytes(16)
        base = address - allocator.PAGE_SIZE  # guard pages before and after
        # "clone": a raw clone(2), where no fork handlers run in the child
        pid = os.fork() if how == "fork" else _libc.syscall(SYS_CLONE, signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            release["child"] = True
            if how == "fork":
                # the child sees what the parent saw: zeros it may read
                assert ctypes.string_at(address, 16) == bytes(16)
            child_after_fork(base, length + 2 * allocator.PAGE_SIZE, release)
        else:
            release["pid"] = pid

    secure = allocator.Secure(backing=params()["backing"], on_before_unmap=hook)
    secret = Secret(100_000, allocator=secure)
    secret.write(0, b"s" * 100_000)
    try:
        secret.close()
    except BaseException:
        if release.get("child"):
            os._exit(3)
        raise
    if release.get("child"):
        try:
            finish_child(release, secret)
        except BaseException as e:  # the child reports and exits
            print("child:", type(e).__name__, e, flush=True)
            os._exit(1)
        os._exit(0)
    pid = release["pid"]
    assert isinstance(pid, int) and pid > 0, release
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the fork child failed: {status:#x}"
    print("forked in the hook:", how, "own mapping" if "own" in release else "")
