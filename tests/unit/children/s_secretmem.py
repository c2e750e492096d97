"""Child programs of ``tests/unit/test_secretmem.py``: secret memory where the kernel refuses
it (a seccomp filter), over the locked-memory limit, and in a core dump.

This module imports pkeyguard only inside the cases: the seccomp case installs its filter
before the library is loaded."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import subprocess
import sys

from tests.childhelpers import drop_cap_ipc_lock, params, say


class Filter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class Prog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter)))


def refuse_memfd_secret(err: int) -> None:
    prog = (Filter * 4)(
        Filter(0x20, 0, 0, 0),  # load the syscall number
        Filter(0x15, 0, 1, 447),  # memfd_secret?
        Filter(0x06, 0, 0, 0x00050000 | err),  # -> fail with err
        Filter(0x06, 0, 0, 0x7FFF0000),  # else allow
    )
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    fprog = Prog(4, ctypes.cast(prog, ctypes.POINTER(Filter)))
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # SECCOMP_MODE_FILTER


def case_falls_back_where_memfd_secret_is_missing() -> None:
    err = params()["err"]
    refuse_memfd_secret(getattr(errno, err))
    import pkeyguard
    from pkeyguard import MprotectError, RegionGuard, Secret, allocator
    from tests.support import anon_mappings, new_anon_mappings

    before = anon_mappings()
    try:
        RegionGuard(8, allocator=allocator.Secure(backing="memfd_secret"))
    except MprotectError as exc:
        assert exc.errno is not None
        enable = "secretmem.enable=1" in str(exc)
        say("strict:", errno.errorcode[exc.errno], exc.syscall, enable)
    say("leftovers:", len(new_anon_mappings(before, anon_mappings())))  # ASan's own: not ours
    a = Secret.from_bytes(b"one")
    b = Secret.from_bytes(b"two")
    say("auto:", a.backing, b.backing, a.equals(b"one"), b.equals(b"two"))
    info = pkeyguard.backend()
    say("backend():", info.secret_memory, f"failed with {err}" in info.secret_memory_reason)
    report = subprocess.run(
        [sys.executable, "-m", "pkeyguard", "info"], capture_output=True, text=True
    ).stdout
    say(report.count("secret memory:    mmap: private mmap pages"))


def case_locked_memory_limit_is_not_a_reason_to_fall_back() -> None:
    drop_cap_ipc_lock()
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (8192, 8192))
    from pkeyguard import MprotectError, Secret

    try:
        Secret(64 * 1024)
    except MprotectError as exc:
        say(exc.syscall, "RLIMIT_MEMLOCK is 8192 bytes" in str(exc))
    say(Secret(100).backing)


def case_core_dump() -> None:
    """Secrets in both backings, read from the files ``memfd_secret`` and ``mmap`` of the
    current directory with readv (no other copy in memory), the file ``plain`` read into a
    bytearray; then abort, dumping core."""
    from pkeyguard import PkeyPermissions, Secret, allocator

    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    kept = []
    backings: tuple[allocator.Backing, ...] = ("memfd_secret", "mmap")
    for backing in backings:
        fd = os.open(backing, os.O_RDONLY)
        s = Secret(32, allocator=allocator.Secure(backing=backing))
        with s._assoc.set_access_rights(PkeyPermissions.ReadWrite) as g:  # pyright: ignore[reportPrivateUsage]
            with memoryview(g.mut_ref_guard()) as m:
                assert os.readv(fd, [m]) == 32
        assert s.backing == backing
        kept.append(s)
    plain = bytearray(32)
    with open("plain", "rb", buffering=0) as f:
        f.readinto(plain)
    os.abort()
