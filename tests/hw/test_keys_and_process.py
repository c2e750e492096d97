"""Key lifecycle, fork, signals and the kernel-selftest cases that apply to a library."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import signal
from typing import Final

import pytest

from pkeyguard import (
    AccessPermissions,
    KeyStateError,
    PkeyGuard,
    PkeyPermissions,
    RegionError,
    RegionGuard,
    _core,
)
from tests.adversarial.support import assert_survived, run_case
from tests.support import pkey_at, syscalls

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess

libc = ctypes.CDLL(None, use_errno=True)

CHILD = "tests.hw.children.h_keys_and_process"


def test_pages_carry_the_key_and_lose_it_on_close() -> None:
    region = RegionGuard(8)
    key = PkeyGuard(NA)
    assert pkey_at(region.address) == 0
    key.associate(region)
    number = key.hardware_key
    assert number is not None and pkey_at(region.address) == number
    key.close()
    # untagged before pkey_free: a later key with the same number cannot reach it
    assert pkey_at(region.address) == 0
    again = PkeyGuard(NA)
    assert again.hardware_key is not None  # a spare (never freed), maybe this very number
    assert again.key != key.key  # the logical id is never reused
    assert pkey_at(region.address) == 0
    again.close()
    region.close()


def test_disassociate_retags_to_key_zero() -> None:
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        assoc.disassociate()
        assert pkey_at(region.address) == 0
        ctypes.c_int.from_address(region.address).value = 3  # plain access works again


def test_refusals_leave_the_tags_alone() -> None:
    # Each refusal is made in the C call that would change the pages (under the GIL, so no
    # guard can be entered in between): the pages keep their key and rights.
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as guard:
            with pytest.raises(KeyStateError, match="still active"):
                key.close()
            with pytest.raises(RegionError):
                assoc.disassociate()
            with pytest.raises(RegionError):
                region.close()
            with pytest.raises(RegionError):
                region.protect(AccessPermissions.ReadOnly)
            assert pkey_at(region.address) == key.hardware_key and region.association is assoc
            guard.mut_ref_guard().value = b"written!"
        assert key.current_rights() is NA
        key.close()
        assert pkey_at(region.address) == 0 and region.association is None


def test_exhaustion_only_when_every_number_is_in_use() -> None:
    """The rule since virtual keys: any number of keys coexist; KeyExhaustedError (ENOSPC)
    only when every hardware key is under an opening guard or held by a key with initial
    rights, and nothing changes then; leaving a guard makes its number available; numbers of
    keys with initial rights and of NoAccess keys never mix.  In fresh processes: nothing
    else holds a key."""
    child = run_case(CHILD, "case_exhaustion", env={"PKEYGUARD_BACKEND": "pku"})
    assert_survived(child)
    assert child.stdout.splitlines()[:-1] == [
        "COEXIST 40 15",
        "REFUSED True True",
        "UNCHANGED True True None",
        "REUSED 15",
        "PINNED REFUSED True True",
    ], child
    child = run_case(CHILD, "case_exhaustion_pinned", env={"PKEYGUARD_BACKEND": "pku"})
    assert_survived(child)
    assert child.stdout.splitlines()[:-1] == [
        "PINNED 15 True True",
        "VIRTUAL REFUSED None",
        "QUARANTINED 1",
        "AGAIN True",
    ], child


def test_freed_key_number_is_left_closed_in_this_thread() -> None:
    with PkeyGuard(RW) as key:
        number = key.hardware_key or 0
        assert number and (_core.rdpkru() >> (2 * number)) & 3 == 0
    assert (_core.rdpkru() >> (2 * number)) & 3 == 1


def test_initial_rights_are_set_for_this_thread() -> None:
    for rights, bits in ((NA, 1), (RO, 2), (RW, 0)):
        with PkeyGuard(rights) as key:
            assert key.hardware_key is not None
            assert (_core.rdpkru() >> (2 * key.hardware_key)) & 3 == bits
            assert key.current_rights() is rights


def test_fork_child_inherits_keys_and_rights() -> None:
    region = RegionGuard(ctypes.c_int)
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard().value = 11
        pid = os.fork()
        if pid == 0:  # child: same PKRU, same guard stack, same key
            code = 0
            try:
                if key.current_rights() is not RW or g.mut_ref_guard().value != 11:
                    code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    pid = os.fork()
    if pid == 0:  # outside the guard the child has NoAccess: a raw read dies
        faulthandler.disable()  # pytest's handler would dump this child's stack
        ctypes.c_int.from_address(region.address).value  # noqa: B018
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    key.close()
    region.close()


def test_python_signal_handler_runs_with_the_threads_rights() -> None:
    with RegionGuard(ctypes.c_int) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        seen: list[int] = []

        def handler(signum: int, frame: object) -> None:
            seen.append(ctypes.c_int.from_address(region.address).value)  # raw read

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            with assoc.set_access_rights(RW) as g:
                g.mut_ref_guard().value = 9
                os.kill(os.getpid(), signal.SIGUSR1)
                # CPython runs the handler here, in the main loop, with this PKRU
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert seen == [9]


def test_c_signal_handler_starts_with_the_kernel_default_pkru(faultprobe: ctypes.CDLL) -> None:
    assert faultprobe.faultprobe_install_pkru_recorder() == 0
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(RW):
            mine = _core.rdpkru()
            signal.pthread_kill(threading_ident(), signal.SIGUSR2)
            assert _core.rdpkru() == mine  # sigreturn restored it
        in_handler = faultprobe.faultprobe_handler_pkru()
        number = key.hardware_key or 0
        assert number and (mine >> (2 * number)) & 3 == 0
        # the handler ran with the kernel's init PKRU: our key access-disabled there
        assert (in_handler >> (2 * number)) & 1 == 1
        assert in_handler != mine


def threading_ident() -> int:
    import threading

    return threading.get_ident()


# --- adapted from tools/testing/selftests/mm/protection_keys.c ----------------------------


def test_kernel_copies_honour_pkru() -> None:
    """read(2)/write(2) on protected memory fail with EFAULT instead of bypassing the key."""
    with RegionGuard(4096) as region, PkeyGuard(NA) as key:
        assoc = key.associate(region)
        rfd, wfd = os.pipe()
        try:
            os.write(wfd, b"abcd")
            ctypes.set_errno(0)
            n = libc.read(rfd, ctypes.c_void_p(region.address), 4)  # kernel writes into it
            assert n == -1 and ctypes.get_errno() == errno.EFAULT
            with assoc.set_access_rights(RO):
                n = libc.read(rfd, ctypes.c_void_p(region.address), 4)
                assert n == -1 and ctypes.get_errno() == errno.EFAULT
                n = libc.write(wfd, ctypes.c_void_p(region.address), 4)  # kernel reads it
                assert n == 4
            with assoc.set_access_rights(RW):
                assert libc.read(rfd, ctypes.c_void_p(region.address), 4) == 4
                assert ctypes.string_at(region.address, 4) == b"abcd"
            ctypes.set_errno(0)
            assert libc.write(wfd, ctypes.c_void_p(region.address), 4) == -1
            assert ctypes.get_errno() == errno.EFAULT
        finally:
            os.close(rfd)
            os.close(wfd)


def test_syscalls_reject_bad_arguments() -> None:
    with RegionGuard(8) as region:
        free = syscalls.pkey_alloc(0, 0)
        syscalls.pkey_free(free)
        for call, args in (
            (syscalls.pkey_mprotect, (region.address, region.mapped_size, 3, free)),  # unallocated
            (syscalls.pkey_mprotect, (region.address, region.mapped_size, 3, 16)),  # out of range
            (syscalls.pkey_free, (free,)),  # double free
            (syscalls.pkey_alloc, (1, 0)),  # flags must be 0
            (syscalls.pkey_alloc, (0, 4)),  # rights beyond AD|WD
        ):
            with pytest.raises(OSError) as info:
                call(*args)
            assert info.value.errno == errno.EINVAL
        assert pkey_at(region.address) == 0


def test_key_zero_mprotect_and_tagging() -> None:
    with RegionGuard(8) as region, PkeyGuard(NA) as key:
        syscalls.pkey_mprotect(region.address, region.mapped_size, 3, 0)  # key 0 always works
        assert pkey_at(region.address) == 0
        key.associate(region)
        syscalls.mprotect(region.address, region.mapped_size, 1)  # plain mprotect keeps the key
        assert key.hardware_key is not None and pkey_at(region.address) == key.hardware_key


def test_initial_pkru_of_a_new_process() -> None:
    child = run_case(CHILD, "case_initial_pkru", env={"PKEYGUARD_BACKEND": "pku"})
    assert_survived(child)
    pkru = int(child.stdout.splitlines()[0], 16)
    assert pkru & 3 == 0, "key 0 is always accessible"
    # every other key starts access-disabled (the kernel's init_pkru, 0x55555554)
    assert all((pkru >> (2 * k)) & 1 for k in range(1, 16)), hex(pkru)


def test_execute_on_an_access_disabled_key() -> None:
    """Instruction fetch ignores PKRU: a key can make code unreadable but still runnable."""
    code = bytes([0xB8, 0x2A, 0x00, 0x00, 0x00, 0xC3])  # mov eax, 42; ret
    with RegionGuard(len(code)) as region, PkeyGuard(NA) as key:
        ctypes.memmove(region.address, code, len(code))
        region.protect(region.access.__class__.ReadExecute)
        key.associate(region)
        fn = ctypes.CFUNCTYPE(ctypes.c_int)(region.address)
        assert fn() == 42
        assert key.current_rights() is NA
