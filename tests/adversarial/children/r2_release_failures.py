"""Issue 18, class 2 (mapping side): every system call of every release path fails once, at
every point (ENOMEM, EAGAIN, EINTR), and the release still fails closed.

A release that cannot complete must leave the secret's bytes at most as open as before (here:
closed), raise a clear error or none, and leave the core usable.  After each injected failure
the case checks, from outside the core, the value's pages: if anything is still mapped there it
must not be readable (the mprotect backend closes them), must not be secret memory any more,
and must not hold the secret's bytes (read through /proc/self/mem, which ignores page rights).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

from pkeyguard import PkeyGuard, PkeyguardError, RegionGuard, Secret, _core, allocator
from pkeyguard.allocator import Backing
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, RW, params

PATTERN = 0x5A
SIZE = 3 * allocator.PAGE_SIZE + 100
NAMES = ("mprotect", "pkey_mprotect", "mmap", "munmap", "madvise", "munlock", "close")
ERRNOS = (errno.ENOMEM, errno.EAGAIN, errno.EINTR)


def maps_over(address: int, length: int) -> list[tuple[str, str]]:
    """(rights, path) of every mapping that overlaps [address, address + length)."""
    found: list[tuple[str, str]] = []
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo < address + length and address < hi:
                found.append((fields[1], fields[5] if len(fields) > 5 else ""))
    return found


def secret_bytes_left(address: int, length: int) -> bool:
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        data = os.pread(fd, length, address)
    except OSError:
        return False  # unmapped, or secret memory (never readable here)
    finally:
        os.close(fd)
    return bytes([PATTERN]) * 16 in data


class Target:
    """One secure region made full of the pattern, and the way to release it."""

    def __init__(self, path: str, backing: Backing) -> None:
        self.path = path
        self.key: PkeyGuard | None = None
        self.assoc: Any = None
        self.guard: Any = None
        hook = (lambda address, length: None) if path == "hook" else None
        secure = allocator.Secure(backing=backing, on_before_unmap=hook)
        self.secret = Secret(SIZE, allocator=secure)
        self.secret.write(0, bytes([PATTERN]) * SIZE)
        self.region: RegionGuard[bytes] = self.secret._region
        self.address = self.secret.address
        if path in ("region", "key-first", "exit-active"):
            # a region of the program's own, tagged with its own key
            self.region = RegionGuard(SIZE, allocator=allocator.Secure(backing=backing))
            self.secret.close()
            self.address = self.region.address
            self.key = PkeyGuard(NA)
            assoc = self.assoc = self.key.associate(self.region)
            with assoc.set_access_rights(RW) as g:
                g.mut_ref_guard()[0:SIZE] = bytes([PATTERN]) * SIZE
            if path == "exit-active":
                self.guard = assoc.set_access_rights(NA)
                self.guard.__enter__()

    def release(self) -> None:
        if self.path in ("secret", "hook"):
            self.secret.close()
        elif self.path == "drop":
            del self.secret
            del self.region
        elif self.path == "collect":
            box: list[object] = [self.secret]
            box.append(box)  # a cycle: the collector frees it
            del self.secret, self.region, box
            gc.collect()
        elif self.path == "exit":
            _core.wipe_at_exit()
        elif self.path == "region":
            self.region.close()
        elif self.path == "key-first":
            assert self.key is not None
            try:
                self.key.close()  # untags the region (a failure leaves it tagged)
            finally:
                self.region.close()
        elif self.path == "exit-active":
            _core.wipe_at_exit()

    def wiped_in_place(self) -> bool:
        """A region in use at exit stays mapped (wiped in place, pku: this thread's PKRU):
        whether it reads as zeros once its guard has ended."""
        if self.path != "exit-active" or self.region.closed:
            return False
        self.guard.__exit__(None, None, None)
        self.guard = None
        with self.assoc.set_access_rights(RW) as g:
            return bytes(g.ref_guard()) == bytes(SIZE)

    def cleanup(self) -> None:
        failinject.reset()
        if self.guard is not None:
            with contextlib.suppress(PkeyguardError):
                self.guard.__exit__(None, None, None)
        for close in (getattr(self, "region", None), self.key):
            if close is not None:
                with contextlib.suppress(PkeyguardError):
                    close.close()


def check_closed(target: Target, where: str) -> None:
    address = target.address
    for rights, path in maps_over(address, SIZE):
        if "secretmem" in path and target.wiped_in_place():
            return
        assert "secretmem" not in path, f"{where}: secret memory still mapped: {path}"
        if rights[0] == "r":
            assert not secret_bytes_left(address, SIZE), f"{where}: the secret is readable"
    assert not secret_bytes_left(address, SIZE), f"{where}: the secret's bytes are left"


def run_one(path: str, backing: Backing, arm: Callable[[], None] | None) -> tuple[int, str]:
    """Release one target with ``arm`` armed; (failures injected, error raised or '')."""
    target = Target(path, backing)
    unraisable: list[str] = []
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
    raised = ""
    if arm is not None:
        arm()
    try:
        target.release()
    except PkeyguardError as e:
        raised = f"{type(e).__name__}: {e}"
    finally:
        injected = sum(failinject.failed(n) for n in NAMES)
        failinject.reset()
        sys.unraisablehook = sys.__unraisablehook__
    gc.collect()
    check_closed(target, f"{path} {raised or unraisable}")
    target.cleanup()
    return injected, raised or "; ".join(unraisable)


def case_every_release_syscall_fails() -> None:
    path, backing = params()["path"], params()["backing"]
    # a clean run: how often the release calls each name
    failinject.reset()
    counts: dict[str, int] = {}
    target = Target(path, backing)
    failinject.reset()
    target.release()
    for name in NAMES:
        counts[name] = failinject.calls(name)
    gc.collect()
    check_closed(target, f"{path} (no failure)")
    target.cleanup()
    injected = 0
    errors: set[str] = set()
    for name, n in counts.items():
        for err in ERRNOS:
            for skip in range(n):

                def arm(name: str = name, err: int = err, skip: int = skip) -> None:
                    failinject.arm(name, err, skip=skip, count=1)

                got, message = run_one(path, backing, arm)
                assert got == 1, (name, err, skip, got)
                injected += got
                if message:
                    errors.add(message.split(" at ")[0][:80])
    # pku wipes a region in use at exit with this thread's PKRU alone: no system call at all
    assert injected > 0 or (path == "exit-active" and not MPROTECT), counts
    # the core still works
    s = Secret(5, allocator=allocator.Secure(backing=backing))
    s.write(0, b"after")
    with s.reveal() as view:
        assert bytes(view) == b"after"
    s.close()
    print("calls", counts, "injected", injected, "errors", sorted(errors))
