"""Issue 18, classes "creation must fail" and 9: a secure region that the kernel cannot back
fails when it is made, with an error that names the limit, never with SIGBUS at a later touch;
sizes that can never be backed are refused before anything is mapped."""

from __future__ import annotations

import errno
import resource

from pkeyguard import MprotectError, PkeyGuard, RegionError, RegionGuard, Secret, allocator
from tests import failinject
from tests.adversarial.childlib import PAGE, RW, assert_clean, params, raises, snapshot
from tests.childhelpers import drop_cap_ipc_lock


def vm_lck() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    raise AssertionError("no VmLck line")


BACKINGS: tuple[allocator.Backing, ...] = ("auto", "memfd_secret", "mmap")


def secure_region(size: int, backing: allocator.Backing) -> RegionGuard[bytes]:
    return RegionGuard(size, allocator=allocator.Secure(backing=backing))


def touch_every_page(region: RegionGuard[bytes]) -> None:
    key = PkeyGuard()
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        view = g.mut_ref_guard()
        for offset in range(0, len(view), PAGE):
            view[offset] = 0x5A
    assoc.disassociate()
    key.close()


def case_secret_memory_over_the_locked_limit_fails_at_creation() -> None:
    # Debian's 6.1.0-57 maps memfd_secret memory over RLIMIT_MEMLOCK and kills the process
    # with SIGBUS at the first touch of a page over it, CAP_IPC_LOCK or not; other kernels
    # refuse at mmap without CAP_IPC_LOCK.  Either way: an error at creation, or a region
    # whose every page can be used.
    keep_cap = bool(params()["keep_cap"])
    if not keep_cap:
        drop_cap_ipc_lock()
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (8192, 8192))
    snap = snapshot()
    refused = 0
    for backing in BACKINGS[:2]:
        try:
            region = secure_region(64 * 1024, backing)
        except MprotectError as exc:
            assert exc.syscall == "mmap", exc
            assert "RLIMIT_MEMLOCK is 8192 bytes" in str(exc), exc
            refused += 1
            continue
        assert keep_cap, "made over RLIMIT_MEMLOCK without CAP_IPC_LOCK"
        touch_every_page(region)  # SIGBUS here on a kernel that charges at the first touch
        region.close()
    if not keep_cap:
        assert refused == 2, refused
    # a secret that fits still comes from secret memory (no fallback)
    with Secret(100) as small:
        assert small.backing == "memfd_secret", small.backing
    assert_clean(snap, "locked limit")


def case_a_page_the_kernel_will_not_back_fails_the_creation() -> None:
    # The kernel refuses to back a page (injected: the call that faults it in gets EFAULT):
    # the creation fails, and nothing is left mapped or locked.
    skip = int(params()["skip"])
    snap = snapshot()
    locked = vm_lck()
    failinject.arm("rt_sigprocmask", errno.EFAULT, skip=skip)
    exc = raises(MprotectError, secure_region, 5 * PAGE, "memfd_secret")
    assert failinject.failed("rt_sigprocmask") == 1, "the pages were not faulted in"
    failinject.reset()
    assert exc.syscall == "mmap" and exc.errno in (errno.EAGAIN, errno.ENOMEM), exc
    assert vm_lck() == locked
    assert_clean(snap, f"populate fails at page {skip}")
    # the next one works
    with RegionGuard(5 * PAGE, allocator=allocator.Secure(backing="memfd_secret")) as region:
        touch_every_page(region)


def case_sizes_that_cannot_be_backed_are_refused_up_front() -> None:
    snap = snapshot()
    for size in (2**40, 2**45):
        for backing in BACKINGS:
            exc = raises(RegionError, secure_region, size, backing)
            assert "cannot be backed" in str(exc), exc
        raises(RegionError, Secret, size)
    assert_clean(snap, "too large")
    # over RLIMIT_MEMLOCK without CAP_IPC_LOCK: refused before anything is mapped
    drop_cap_ipc_lock()
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))
    for backing in BACKINGS[1:]:
        err = raises(MprotectError, secure_region, 16 << 20, backing)
        assert "RLIMIT_MEMLOCK is 8388608 bytes" in str(err), err
    assert_clean(snap, "over the limit")
