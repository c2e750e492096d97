"""memfd_secret backing: fallback policy, resource exhaustion, leaks.  The child programs
are ``children/s_secretmem.py``."""

import shutil
import subprocess

import pytest

from tests.adversarial.support import assert_survived, run_case
from tests.support import REPO_ROOT, Child, case_command


def test_transient_emfile_must_not_downgrade_secrets_for_the_process_lifetime() -> None:
    """DEFECT: README: fall back to private mmap where memfd_secret is *missing* (ENOSYS, or
    EPERM from seccomp); resource limits are "never a reason to fall back".  But if the fd
    table is full (EMFILE) when the first Secret is made, "auto" silently falls back to
    mmap, caches it, and every later secret of the process is mmap (readable through
    /proc/PID/mem) even after fds are free; backend() blames the kernel/seccomp."""
    assert_survived(run_case("s_secretmem", "case_transient_emfile", watchdog=30))


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
    child = run_case(
        "s_secretmem",
        "case_seccomp_denied_step",
        params={"rules": rules, "auto": auto},
        watchdog=30,
    )
    assert_survived(child)


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap", "auto"])
def test_memlock_exhaustion_is_a_clear_error_not_a_fallback(backing: str) -> None:
    """HELD (run without CAP_IPC_LOCK via setpriv): RLIMIT_MEMLOCK 64 KiB, many secrets ->
    MprotectError naming RLIMIT_MEMLOCK, no fallback, no fd or mapping leak."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    # run_case's child, started through setpriv (the runner takes no command prefix).
    argv, env = case_command(
        "tests.adversarial.children.s_secretmem",
        "case_memlock_exhaustion",
        params={"backing": backing},
    )
    env["PKEYGUARD_BACKEND"] = "mprotect"
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-ipc_lock", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    assert_survived(Child(proc.returncode, proc.stdout, proc.stderr))
