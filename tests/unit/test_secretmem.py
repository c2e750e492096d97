"""Secret memory from memfd_secret(2): what it adds over private mmap memory, proved through
the kernel (/proc/PID/mem, process_vm_readv, /proc/PID/maps), and the fallback where the
kernel has none (a seccomp filter stands in for an old kernel or a container's policy).

This machine's kernel has memfd_secret; a kernel without it fails the memfd_secret cases
rather than skipping them (Linux 5.14 to 6.4 need ``secretmem.enable=1``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

import pkeyguard
from pkeyguard import MprotectError, RegionGuard, Secret, allocator
from tests.adversarial.support import assert_survived, run_case
from tests.support import SECRETMEM, case_command, maps, proc_mem_read

SECRET = b"correct horse battery staple"


def make(backing: allocator.Backing) -> Secret:
    secret = Secret(len(SECRET), allocator=allocator.Secure(backing=backing))
    secret.write(0, SECRET)
    return secret


def kernel_has_memfd_secret() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(447, 0)
    if fd >= 0:
        os.close(fd)
        return True
    return False


def test_this_kernel_has_it_and_auto_uses_it() -> None:
    assert kernel_has_memfd_secret(), (
        "memfd_secret(2) is missing: Linux 5.14 to 6.4 need secretmem.enable=1 on the kernel "
        "command line (this suite expects the kernel to have it)"
    )
    info = pkeyguard.backend()
    assert info.secret_memory == "memfd_secret", info.secret_memory_reason
    assert "memfd_secret(2)" in info.secret_memory_reason
    with Secret.from_bytes(b"k") as secret:
        assert secret.backing == "memfd_secret"
        line = next(m for m in maps() if m.startswith(f"{secret.address:x}-"))
        assert line.split()[5] == SECRETMEM and line.split()[1].endswith("s"), line
    with Secret.from_bytes(b"k") as secret:  # the descriptor did not stay open
        assert not any(
            os.readlink(f"/proc/self/fd/{fd}").startswith("/secretmem")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        )


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def process_vm_read(address: int, n: int) -> bytes | int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    out = ctypes.create_string_buffer(n)
    local = IOVec(ctypes.cast(out, ctypes.c_void_p), n)
    remote = IOVec(address, n)
    got = libc.process_vm_readv(
        os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, ctypes.c_ulong(0)
    )
    return out.raw[:got] if got >= 0 else ctypes.get_errno()


@pytest.mark.parametrize("reader", [proc_mem_read, process_vm_read])
def test_same_user_inspection_cannot_read_it(reader: object) -> None:
    """Another reader of this process's memory: /proc/PID/mem ignores page and key rights
    (FOLL_FORCE); process_vm_readv ignores key rights, and page rights allow it while any
    thread reveals the secret.  memfd_secret pages are out of the kernel's direct map: both
    fail, even then, where the mmap backing gives the bytes away."""
    assert callable(reader)
    with make("memfd_secret") as secret, secret.reveal():
        assert reader(secret.address, len(SECRET)) in (errno.EIO, errno.EFAULT)
    with make("mmap") as secret, secret.reveal():
        assert reader(secret.address, len(SECRET)) == SECRET


CHILD = "tests.unit.children.s_secretmem"


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_falls_back_where_memfd_secret_is_missing(err: str) -> None:
    child = run_case(CHILD, "case_falls_back_where_memfd_secret_is_missing", params={"err": err})
    assert_survived(child)
    assert child.stdout.split("\n")[:5] == [
        f"strict: {err} memfd_secret True",
        "leftovers: 0",
        "auto: mmap mmap True True",
        "backend(): mmap True",
        "1",  # the filter is inherited by the child process that prints the report
    ], child


def test_locked_memory_limit_is_not_a_reason_to_fall_back() -> None:
    """memfd_secret pages count against RLIMIT_MEMLOCK; over it, 'auto' says so rather than
    quietly giving weaker memory (private memory would be mlock-ed against the same limit)."""
    child = run_case(CHILD, "case_locked_memory_limit_is_not_a_reason_to_fall_back")
    assert_survived(child)
    assert child.stdout.split("\n")[:2] == ["mmap True", "memfd_secret"], child


def test_region_guard_with_secret_memory() -> None:
    """Any RegionGuard can live in it, with the usual key and guards."""
    with (
        RegionGuard(ctypes.c_uint64, allocator=allocator.Secure(backing="memfd_secret")) as r,
        pkeyguard.PkeyGuard() as key,
    ):
        assert r._advice["secretmem"]
        assoc = key.associate(r)
        with assoc.set_access_rights(pkeyguard.PkeyPermissions.ReadWrite) as g:
            g.mut_ref_guard().value = 2**63
        with assoc.set_access_rights(pkeyguard.PkeyPermissions.ReadOnly) as g:
            assert g.ref_guard().value == 2**63


def test_strict_backing_error_is_an_oserror() -> None:
    assert issubclass(MprotectError, OSError)


def test_left_out_of_a_core_dump(tmp_path: Path) -> None:
    """A real core dump of a process holding secrets in both backings: neither secret's bytes
    are in it, and the same bytes in a bytearray are (the test can see them).  The child reads
    the bytes from a file with readv/readinto, so no other copy is in its memory."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    assert not pattern.startswith("|"), f"core_pattern pipes dumps elsewhere: {pattern}"
    values = {name: os.urandom(32) for name in ("memfd_secret", "mmap", "plain")}
    for name, value in values.items():
        (tmp_path / name).write_bytes(value)
    argv, env = case_command(CHILD, "case_core_dump")
    env["PKEYGUARD_CASE_FAULTHANDLER"] = "0"  # SIGABRT straight to the kernel's dump
    child = subprocess.run(
        argv,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGABRT, child
    cores = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
    assert cores, f"no core file written (core_pattern {pattern!r}): {child}"
    dump = cores[0].read_bytes()
    assert values["plain"] in dump, "the control is missing: the dump cannot be searched"
    assert values["memfd_secret"] not in dump
    assert values["mmap"] not in dump
