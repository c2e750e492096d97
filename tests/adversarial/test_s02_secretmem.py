# ruff: noqa: E501 (the attacks are child programs in strings; their lines stay whole)
"""memfd_secret backing: fallback policy, resource exhaustion, leaks."""

import os

import pytest

from tests.adversarial.support import assert_survived, attack

ROOT = str(__import__("pathlib").Path(__file__).resolve().parents[2])

HELPER_DIR = os.path.dirname(os.path.abspath(__file__))


def test_transient_emfile_must_not_downgrade_secrets_for_the_process_lifetime() -> None:
    """DEFECT: README: fall back to private mmap where memfd_secret is *missing* (ENOSYS, or
    EPERM from seccomp); resource limits are "never a reason to fall back".  But if the fd
    table is full (EMFILE) when the first Secret is made, "auto" silently falls back to
    mmap, caches it, and every later secret of the process is mmap (readable through
    /proc/PID/mem) even after fds are free; backend() blames the kernel/seccomp."""
    child = attack(
        """
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            first = Secret.from_bytes(b"k" * 16)
            under = first.backing
        except PkeyguardError as e:
            under = "raised " + type(e).__name__
        for fd in held:
            os.close(fd)
        later = Secret.from_bytes(b"k" * 16).backing
        info = pkeyguard.backend()
        print("under EMFILE:", under, "| later:", later, "|", info.secret_memory, info.secret_memory_reason)
        assert later == "memfd_secret", (
            f"a transient EMFILE downgraded every later secret to {later!r}: {info.secret_memory_reason}")
        assert under != "mmap", "EMFILE made a silent fallback to mmap"
        """,
        watchdog=30,
    )
    assert_survived(child)


SECCOMP = """
sys.path.insert(0, {helper!r})
from seccomp_helper import deny
import errno
"""


@pytest.mark.parametrize(
    "rules, auto",
    [
        ({"memfd_secret": "EPERM"}, "mmap"),
        ({"memfd_secret": "ENOSYS"}, "mmap"),
        ({"ftruncate": "EPERM"}, "raise"),
        ({"ftruncate": "ENOMEM"}, "raise"),
        ({"mmap_shared": "EPERM"}, "raise"),
        ({"mmap_shared": "ENOMEM"}, "raise"),
    ],
)
def test_seccomp_denied_steps_fall_back_or_raise_and_leave_nothing(
    rules: dict[str, str], auto: str
) -> None:
    """HELD: memfd_secret denied -> mmap, reported by backend(); a later step (ftruncate,
    mmap MAP_SHARED) denied -> MprotectError naming the syscall; no fd or mapping left."""
    # The prelude imports pkeyguard before the body: the probe is lazy, so deny first thing.
    child = attack(
        SECCOMP.format(helper=HELPER_DIR)
        + """
def fds():
    return sorted(os.listdir("/proc/self/fd"))
deny({k: getattr(errno, v) for k, v in PARAMS["rules"].items()})
gc.collect(); f0 = fds(); snap = snapshot()
info = pkeyguard.backend()
for i in range(5):
    try:
        s = Secret.from_bytes(b"y" * 16)
        got = s.backing
        s.close()
    except pkeyguard.MprotectError as e:
        got = "raise"
    assert got == PARAMS["auto"], (got, info.secret_memory_reason)
if PARAMS["auto"] == "mmap":
    assert info.secret_memory == "mmap", info
    raises(pkeyguard.MprotectError, Secret, 8, allocator=allocator.Secure(backing="memfd_secret"))
s = Secret(8, allocator=allocator.Secure(backing="mmap")); s.close()
s = None
assert fds() == f0, (f0, fds())
assert_clean(snap, "seccomp")
""",
        params={"rules": rules, "auto": auto},
        watchdog=30,
    )
    assert_survived(child)


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap", "auto"])
def test_memlock_exhaustion_is_a_clear_error_not_a_fallback(backing: str) -> None:
    """HELD (run without CAP_IPC_LOCK via setpriv): RLIMIT_MEMLOCK 64 KiB, many secrets ->
    MprotectError naming RLIMIT_MEMLOCK, no fallback, no fd or mapping leak."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    code = f"""
import os, sys, gc, resource
sys.path.insert(0, {ROOT!r})
from tests.support import anon_mappings, new_anon_mappings
from pkeyguard import Secret, allocator, MprotectError
resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
Secret(8, allocator=allocator.Secure(backing={backing!r})).close()
gc.collect(); f0 = sorted(os.listdir("/proc/self/fd")); m0 = anon_mappings()
secs = []
try:
    for i in range(100):
        secs.append(Secret(100, allocator=allocator.Secure(backing={backing!r})))
    raise SystemExit("no error after 100 locked pages")
except MprotectError as e:
    assert "RLIMIT_MEMLOCK" in str(e), e
backings = {{s.backing for s in secs}}
assert len(backings) == 1, backings
for s in secs:
    s.close()
secs = None; gc.collect()
assert sorted(os.listdir("/proc/self/fd")) == f0
assert not new_anon_mappings(m0, anon_mappings())
print("ADVERSARIAL-OK")
"""
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-ipc_lock", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PKEYGUARD_BACKEND": "mprotect"},
    )
    assert proc.returncode == 0 and "ADVERSARIAL-OK" in proc.stdout, proc.stderr[-3000:]
