"""memfd_secret backing: fallback policy, resource exhaustion, leaks (the child programs of
``test_s02_secretmem.py``)."""

from __future__ import annotations

import errno
import gc
import os
import resource

import pkeyguard
from pkeyguard import MprotectError, PkeyguardError, Secret, allocator
from tests.adversarial.childlib import assert_clean, params, raises, snapshot
from tests.adversarial.seccomp_helper import deny
from tests.childhelpers import say
from tests.support import anon_mappings, new_anon_mappings


def case_transient_emfile() -> None:
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    under: str
    try:
        first = Secret.from_bytes(b"k" * 16)
        under = first.backing
    except PkeyguardError as e:
        under = "raised " + type(e).__name__
    for fd in held:
        os.close(fd)
    later = Secret.from_bytes(b"k" * 16).backing
    info = pkeyguard.backend()
    say("under EMFILE:", under, "| later:", later, "|", info.secret_memory)
    say(info.secret_memory_reason)
    assert later == "memfd_secret", (
        f"a transient EMFILE downgraded every later secret to {later!r}: "
        f"{info.secret_memory_reason}"
    )
    assert under != "mmap", "EMFILE made a silent fallback to mmap"


def fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def case_seccomp_denied_step() -> None:
    """``params()``: ``rules`` (syscall step -> errno name) and ``auto`` (what a secret of the
    automatic backing must get: ``mmap`` or ``raise``).  The library probes lazily, so the
    filter goes in first thing."""
    p = params()
    deny({k: getattr(errno, v) for k, v in p["rules"].items()})
    gc.collect()
    f0 = fds()
    snap = snapshot()
    info = pkeyguard.backend()
    for _ in range(5):
        got: str
        try:
            s = Secret.from_bytes(b"y" * 16)
            got = s.backing
            s.close()
        except MprotectError:
            got = "raise"
        assert got == p["auto"], (got, info.secret_memory_reason)
    if p["auto"] == "mmap":
        assert info.secret_memory == "mmap", info
        raises(MprotectError, lambda: Secret(8, allocator=allocator.Secure(backing="memfd_secret")))
    s = Secret(8, allocator=allocator.Secure(backing="mmap"))
    s.close()
    del s
    assert fds() == f0, (f0, fds())
    assert_clean(snap, "seccomp")


def case_memlock_exhaustion() -> None:
    """Run without CAP_IPC_LOCK (the parent uses setpriv): RLIMIT_MEMLOCK 64 KiB, then
    secrets of ``params()["backing"]`` until MprotectError."""
    b = params()["backing"]
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
    Secret(8, allocator=allocator.Secure(backing=b)).close()
    gc.collect()
    f0 = fds()
    m0 = anon_mappings()
    secs: list[Secret] = []
    try:
        for _ in range(100):
            secs.append(Secret(100, allocator=allocator.Secure(backing=b)))
        raise SystemExit("no error after 100 locked pages")
    except MprotectError as e:
        assert "RLIMIT_MEMLOCK" in str(e), e
    backings = {s.backing for s in secs}
    assert len(backings) == 1, backings
    for s in secs:
        s.close()
    del secs
    gc.collect()
    assert fds() == f0
    assert not new_anon_mappings(m0, anon_mappings())
