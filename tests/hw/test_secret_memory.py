"""Secrets in memfd_secret(2) memory on pku: the pages carry the library's key, a stray
read dies with SEGV_PKUERR, /proc/self/mem cannot read them even inside reveal(), and a
fork child gets zero pages that carry the key too.

The guest boots with ``secretmem.enable=1`` (tools/test.sh): Debian's 6.1 kernel has
memfd_secret switched off without it.  A kernel that cannot offer it fails here.
"""

from __future__ import annotations

import errno
import signal

from pkeyguard import Secret, allocator
from tests.adversarial.support import run_case
from tests.support import SECRETMEM, maps, pkey_at, proc_mem_read, secret_key

CHILD = "tests.hw.children.h_secret_memory"

NEEDS = (
    "memfd_secret(2) is unavailable in this guest: Linux 5.14 to 6.4 need secretmem.enable=1 "
    "(pkeyguard-vm --kernel-arg secretmem.enable=1)"
)


def test_secrets_use_secret_memory_tagged_with_the_key() -> None:
    with Secret.from_bytes(b"hunter2") as secret, Secret.from_bytes(b"other") as other:
        assert secret.backing == "memfd_secret", NEEDS
        line = next(m for m in maps() if m.startswith(f"{secret.address:x}-"))
        assert line.split()[5] == SECRETMEM, line
        with secret.reveal() as buf:
            assert bytes(buf) == b"hunter2"
            own_key = secret_key(secret)  # its own key (one per secret), holding a number now
            number = own_key.hardware_key
            assert number is not None and pkey_at(secret.address) == number  # pkey_mprotect took
            assert secret_key(other) is not own_key
            assert pkey_at(other.address) in (0, secret_key(other).hardware_key)
            assert pkey_at(other.address) != number


def test_proc_self_mem_reads_mmap_secrets_but_not_secret_memory() -> None:
    """The kernel applies no key rights to /proc/PID/mem: the mmap backing gives the bytes
    away even on pku; memfd_secret pages are out of the direct map (EIO)."""
    plain = Secret(7, allocator=allocator.Secure(backing="mmap"))
    plain.write(0, b"hunter2")
    with plain:
        assert proc_mem_read(plain.address, 7) == b"hunter2"
    with Secret.from_bytes(b"hunter2") as secret:
        assert secret.backing == "memfd_secret", NEEDS
        assert proc_mem_read(secret.address, 7) == errno.EIO
        with secret.reveal():
            assert proc_mem_read(secret.address, 7) == errno.EIO


def test_stray_read_of_secret_memory_dies_with_pkuerr() -> None:
    child = run_case(
        CHILD, "case_stray_read", env={"PKEYGUARD_BACKEND": "pku"}, fault_handler=False
    )
    assert child.returncode == -signal.SIGSEGV, child
    assert child.stdout.strip() == "memfd_secret", NEEDS
    assert "SEGV_PKUERR" in child.stderr and "db-password" in child.stderr


def test_fork_child_gets_closed_zero_pages_with_the_key() -> None:
    child = run_case(
        CHILD,
        "case_fork_gets_closed_zero_pages",
        env={"PKEYGUARD_BACKEND": "pku"},
        fault_handler=False,
    )
    assert child.returncode == 0, child
    assert child.stdout.split("\n")[:2] == ["child 0", "parent b'hunter2'"], child
