"""Child programs of ``tests/hw/test_secret_memory.py`` (memfd_secret memory on pku)."""

from __future__ import annotations

import ctypes
import os

import pkeyguard
from pkeyguard import Secret, SecretUnavailableError
from tests.childhelpers import say
from tests.support import perms_at, pkey_at, secret_key


def case_stray_read() -> None:
    pkeyguard.faults.enable()
    s = Secret.from_bytes(b"hunter2", name="db-password")
    say(s.backing)
    ctypes.string_at(s.address, 7)


def case_fork_gets_closed_zero_pages() -> None:
    s = Secret.from_bytes(b"hunter2")
    assert s.backing == "memfd_secret"
    key = secret_key(s).hardware_key
    assert key is not None
    pid = os.fork()
    if pid == 0:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
        zeros = os.pread(fd, 7, s.address) == bytes(7)  # private zero pages: readable here
        tagged = pkey_at(s.address) == key
        closed = perms_at(s.address).startswith("---")  # a memoryview from before faults here
        try:
            s.reveal()
            refused = False
        except SecretUnavailableError:
            refused = True
        s.close()
        os._exit(0 if (zeros and tagged and closed and refused) else 1)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    with s.reveal() as buf:
        print("parent", bytes(buf))
    s.close()
