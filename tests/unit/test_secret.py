from __future__ import annotations

import copy
import ctypes
import hashlib
import hmac
import os
import pickle
import signal
from pathlib import Path

import pytest

from pkeyguard import MprotectError, RegionError, RegionGuard, Secret, allocator
from pkeyguard.allocator import CanaryError, Secure
from tests.adversarial.support import run_case
from tests.support import perms_at, smaps_field

PAGE = allocator.PAGE_SIZE
CHILD = "tests.unit.children.s_secret"


def vm_lck_kb() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    raise AssertionError("no VmLck line")


def vm_flags(address: int) -> set[str]:
    words = smaps_field(address, "VmFlags")
    assert words is not None, f"no mapping at {address:#x}"
    return set(words)


#: Both ways secret memory is backed; the machines that run this suite have memfd_secret
#: (a kernel without it fails the memfd_secret cases: see tests/unit/test_secretmem.py).
BACKINGS = ["memfd_secret", "mmap"]


@pytest.fixture(params=BACKINGS)
def backing(request: pytest.FixtureRequest) -> allocator.Backing:
    value: allocator.Backing = request.param
    return value


def private_or_shared(backing: str) -> str:
    """The last letter /proc/PID/maps shows for the usable pages."""
    return "s" if backing == "memfd_secret" else "p"


@pytest.mark.usefixtures("no_leaks")
class TestSecureAllocator:
    def test_guard_pages_surround_the_value(self, backing: allocator.Backing) -> None:
        with RegionGuard(100, allocator=Secure(backing=backing)) as region:
            assert perms_at(region.address - 1) == "---p"
            assert perms_at(region.address) == "rw-" + private_or_shared(backing)
            assert perms_at(region.address + region.mapped_size) == "---p"

    @pytest.mark.parametrize("where", ["before", "after"])
    def test_touching_a_guard_page_faults(self, where: str, backing: str) -> None:
        child = run_case(
            CHILD,
            "case_touching_a_guard_page_faults",
            params={"backing": backing, "where": where},
            fault_handler=False,
        )
        assert child.returncode == -signal.SIGSEGV, child
        assert child.stdout.strip() == "value ok"

    def test_locked_in_memory(self, backing: allocator.Backing) -> None:
        before = vm_lck_kb()
        with RegionGuard(3 * PAGE, allocator=Secure(backing=backing)) as region:
            assert vm_lck_kb() - before == region.mapped_size // 1024
            assert "lo" in vm_flags(region.address)
        assert vm_lck_kb() == before
        with RegionGuard(8, allocator=Secure(lock=False)):
            assert vm_lck_kb() == before

    def test_excluded_from_core_dumps_and_wiped_on_fork(self) -> None:
        with RegionGuard(8, allocator=Secure(backing="mmap")) as region:
            flags = vm_flags(region.address)
            assert "dd" in flags, flags  # MADV_DONTDUMP
            assert "wf" in flags, flags  # MADV_WIPEONFORK
            assert "lo" in flags, flags  # mlock
        with RegionGuard(8, allocator=Secure(backing="memfd_secret")) as region:
            # shared pages: WIPEONFORK is refused there, so they do not go to a child at all
            flags = vm_flags(region.address)
            assert {"dd", "dc", "lo"} <= flags, flags  # MADV_DONTDUMP, MADV_DONTFORK, locked
            assert "dc" in vm_flags(region.address - 1)  # the guard pages too
        with RegionGuard(8) as plain:
            assert not {"dd", "wf", "lo", "dc"} & vm_flags(plain.address)

    def test_fork_child_sees_zeros(self, backing: allocator.Backing) -> None:
        # zero pages, closed (PROT_NONE) in the child: read through the kernel
        with RegionGuard(64, allocator=Secure(backing=backing)) as region:
            ctypes.memmove(region.address, b"s3cret" * 10, 60)
            pid = os.fork()
            if pid == 0:
                fd = os.open("/proc/self/mem", os.O_RDONLY)
                zeros = os.pread(fd, 64, region.address) == bytes(64)
                closed = perms_at(region.address).startswith("---")
                os._exit(0 if zeros and closed else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert ctypes.string_at(region.address, 6) == b"s3cret"  # the parent keeps it

    def test_zeroed_before_unmap(self, backing: allocator.Backing) -> None:
        seen: list[bytes] = []
        region = RegionGuard(
            PAGE + 10,
            allocator=Secure(
                backing=backing, on_before_unmap=lambda a, n: seen.append(ctypes.string_at(a, n))
            ),
        )
        ctypes.memset(region.address, 0xAB, PAGE + 10)
        region.close()
        assert len(seen) == 1 and seen[0] == bytes(2 * PAGE)

    def test_canary_catches_an_overflow(self, backing: allocator.Backing) -> None:
        region = RegionGuard(32, allocator=Secure(backing=backing))
        address = region.address
        # One byte too many, and one that differs from the canary's first byte (a fixed byte
        # equals the random canary's one time in 256: the overflow would go unseen).
        canary = ctypes.string_at(address + 32, 1)[0]
        ctypes.memset(address, 0x41, 32)
        ctypes.memset(address + 32, canary ^ 0xFF, 1)
        assert ctypes.string_at(address + 32, 1)[0] != canary  # the overflow changed it
        with pytest.raises(CanaryError, match="overwritten"):
            region.close()
        assert region.closed and perms_at(address) == ""

    def test_intact_canary_is_silent(self, backing: allocator.Backing) -> None:
        region = RegionGuard(32, allocator=Secure(backing=backing))
        ctypes.memset(region.address, 0x41, 32)
        region.close()

    def test_mlock_limit_error_names_the_limit(self, backing: str) -> None:
        child = run_case(
            CHILD, "case_mlock_limit_error_names_the_limit", params={"backing": backing}
        )
        assert child.returncode == 0, child.stderr
        assert "RLIMIT_MEMLOCK is 4096 bytes" in child.stdout and "ulimit -l" in child.stdout
        assert "MAPS True" in child.stdout

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError):
            Secure(canary_size=-1)
        with pytest.raises(ValueError):
            Secure(canary_size=allocator.MAX_CANARY + 1)
        with pytest.raises(TypeError):
            Secure(canary_size=True)
        with pytest.raises(ValueError, match="backing"):
            Secure(backing="tmpfs")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Secure(backing=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="always locked"):
            Secure(backing="memfd_secret", lock=False)
        assert "backing='auto'" in repr(Secure())


@pytest.mark.usefixtures("no_leaks")
class TestSecret:
    def test_from_bytes_reveal_and_wipe_source(self) -> None:
        source = bytearray(b"api-token-123456")
        with Secret.from_bytes(source, name="token") as secret:
            assert source == bytearray(16), "the writable source is wiped"
            assert len(secret) == 16
            with secret.reveal() as buf:
                assert bytes(buf) == b"api-token-123456"
                assert (
                    hashlib.sha256(buf).hexdigest()
                    == hashlib.sha256(b"api-token-123456").hexdigest()
                )
                mac = hmac.digest(buf, b"msg", "sha256")
            assert mac == hmac.digest(b"api-token-123456", b"msg", "sha256")
            assert secret.equals(b"api-token-123456") and not secret.equals(b"nope")
            assert "api-token" not in repr(secret) and "token" in repr(secret)

    def test_closed_outside_reveal(self) -> None:
        with Secret.from_bytes(b"k" * 32) as secret:
            address = secret.address
            kind = private_or_shared(secret.backing)
            assert perms_at(address) == "---" + kind
            with secret.reveal() as buf:
                assert perms_at(address) == "r--" + kind
                with pytest.raises(PermissionError):
                    buf[0] = 1  # type: ignore[index]
            assert perms_at(address) == "---" + kind
            assert "dd" in vm_flags(address)

    def test_raw_read_outside_reveal_faults(self) -> None:
        child = run_case(CHILD, "case_raw_read_outside_reveal_faults", fault_handler=False)
        assert child.returncode == -signal.SIGSEGV, child
        assert child.stdout.strip() == "b'hunter2'"

    def test_from_file(self, tmp_path: Path) -> None:
        path = tmp_path / "key.pem"
        path.write_bytes(b"-----BEGIN KEY-----\n" + b"x" * 5000)
        with Secret.from_file(path) as secret:
            assert len(secret) == 5020
            with secret.reveal() as buf:
                assert bytes(buf) == path.read_bytes()

    def test_from_chunks_grows(self) -> None:
        chunks: list[bytes | bytearray] = [bytearray(b"ab"), bytearray(b"c" * 5000), b"d"]
        with Secret.from_chunks(iter(chunks)) as secret:
            assert len(secret) == 5003
            with secret.reveal() as buf:
                assert bytes(buf) == b"ab" + b"c" * 5000 + b"d"
        assert chunks[0] == bytearray(2) and chunks[1] == bytearray(5000)

    def test_bad_input(self) -> None:
        for size in (0, -1, True, "8"):
            with pytest.raises(RegionError):
                Secret(size)  # type: ignore[arg-type]
        with pytest.raises(RegionError, match="no bytes"):
            Secret.from_chunks([])
        with pytest.raises(TypeError):
            Secret.from_bytes("text")  # type: ignore[arg-type]
        with Secret(4) as secret:
            with pytest.raises(RegionError, match="overflows"):
                secret.write(2, b"abc")
            for fn in (pickle.dumps, copy.copy, copy.deepcopy):
                with pytest.raises(TypeError):
                    fn(secret)
        secret.close()
        with pytest.raises(RegionError, match="closed"), secret.reveal():
            pass

    def test_dropped_secret_is_wiped(self) -> None:
        seen: list[bytes] = []
        secret = Secret(
            9, allocator=Secure(on_before_unmap=lambda a, n: seen.append(ctypes.string_at(a, n)))
        )
        secret.write(0, b"forgotten")
        address = secret.address
        del secret  # no close(): dropping it is enough, at once
        assert seen == [bytes(PAGE)] and perms_at(address) == ""

    def test_library_key_is_not_exposed(self) -> None:
        # Secrets share a library-owned key: handing it out would let `with s.key:` close it
        # (opening every secret); the region would allow set_access_rights(ReadWrite).
        with Secret.from_bytes(b"k") as secret:
            for name in ("key", "region"):
                assert not hasattr(secret, name)

    def test_close_zeroes(self) -> None:
        seen: list[bytes] = []
        secret = Secret(
            8, allocator=Secure(on_before_unmap=lambda a, n: seen.append(ctypes.string_at(a, n)))
        )
        secret.write(0, b"12345678")
        secret.close()
        secret.close()
        assert seen == [bytes(PAGE)]


def test_memlock_error_type() -> None:
    assert issubclass(MprotectError, OSError)
