"""Issue 18, classes 10 and 9: wiping never opens the bytes it wipes, and costs what was
touched, not the size.

A native reader thread (tests/native/faultprobe.c) reads the last 8 bytes of a secret's value
in a loop while the secret is released, counting reads that return the secret's bytes.  Before
the fix the release re-tagged the pages to key 0 read-write before zeroing them, and the
reader read the secret thousands of times."""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable
from typing import Any

from pkeyguard import PkeyGuard, RegionGuard, Secret, _core, allocator
from tests.adversarial.childlib import (
    MPROTECT,
    NA,
    RW,
    assert_clean,
    params,
    room_to_lock,
    snapshot,
)

PATTERN = 0xA5
SIZE = 4 << 20


class Reader:
    """The native reader thread (faultprobe_reader_*)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(os.environ["FAULTPROBE"])
        lib.faultprobe_reader_start.restype = ctypes.c_int
        lib.faultprobe_reader_target.argtypes = [ctypes.c_size_t, ctypes.c_uint64]
        lib.faultprobe_reader_target.restype = None
        lib.faultprobe_reader_counts.argtypes = [ctypes.POINTER(ctypes.c_long)] * 3
        lib.faultprobe_reader_counts.restype = None
        lib.faultprobe_reader_stop.restype = ctypes.c_int
        self.lib = lib
        assert lib.faultprobe_reader_start() == 0

    def counts(self) -> tuple[int, int, int]:
        hits, reads, faults = ctypes.c_long(), ctypes.c_long(), ctypes.c_long()
        self.lib.faultprobe_reader_counts(
            ctypes.byref(hits), ctypes.byref(reads), ctypes.byref(faults)
        )
        return hits.value, reads.value, faults.value

    def watch(self, address: int) -> None:
        """Read the 8 bytes at ``address``; a read that returns the secret is a hit."""
        self.lib.faultprobe_reader_target(address, int.from_bytes(bytes([PATTERN]) * 8, "little"))
        before = self.counts()
        # the reader is running on the address (it faults while the secret is closed)
        deadline = time.monotonic() + 5
        while sum(self.counts()[1:]) < sum(before[1:]) + 100:
            assert time.monotonic() < deadline, "the reader does not run"
            time.sleep(0.001)

    def pause(self) -> None:
        self.lib.faultprobe_reader_target(0, 0)

    def stop(self) -> None:
        assert self.lib.faultprobe_reader_stop() == 0


def secret_full(allocator_: allocator.Secure | None = None, size: int = SIZE) -> Secret:
    secret = Secret(size, allocator=allocator_ or allocator.Secure(backing=params()["backing"]))
    secret.write(0, bytes([PATTERN]) * size)
    return secret


def last_bytes(secret: Secret) -> int:
    return secret.address + len(secret) - 8


def release_under_watch(reader: Reader, address: int, release: Callable[[], Any]) -> int:
    """Run ``release`` while the reader reads ``address``; the secret reads it saw."""
    hits0, _, _ = reader.counts()
    reader.watch(address)
    hits1, reads1, faults1 = reader.counts()
    assert hits1 == hits0, "the reader read the secret before its release (a closed secret)"
    release()
    # the reader reads on across the release (a fast one may fall between two reads)
    deadline = time.monotonic() + 5
    while sum(reader.counts()[1:]) < reads1 + faults1 + 100:
        assert time.monotonic() < deadline, "the reader stopped during the release"
        time.sleep(0.001)
    hits2, _, _ = reader.counts()
    reader.pause()
    return hits2 - hits1


def release_once(reader: Reader, how: str, round_: int) -> int:
    """One release of a full secret, the way ``how`` says; the secret reads the reader saw."""
    hits = 0
    if how == "close":
        s = secret_full()
        hits += release_under_watch(reader, last_bytes(s), s.close)
    elif how == "drop":
        box = [secret_full()]
        hits += release_under_watch(reader, last_bytes(box[0]), box.clear)
    elif how == "collect":
        # dropped inside reveal(): the region and its association are a garbage cycle once
        # the block ends; the collector takes them apart (tp_clear)
        s = secret_full()
        address = last_bytes(s)
        guard = s.reveal()
        guard.__enter__()
        gc.disable()
        del s
        guard.__exit__(None, None, None)  # closed again (NoAccess) from here on
        refs = [guard]
        del guard

        def drop_and_collect() -> None:
            refs.clear()
            gc.collect()

        hits += release_under_watch(reader, address, drop_and_collect)
        gc.enable()
    elif how == "grow":
        # a secret outgrown while it is read (from_fd, from_chunks): the old copy is
        # closed once it was copied (watched from there: the copy itself is a reveal(),
        # which the mprotect backend opens to every thread, as documented)
        s = secret_full()
        address = last_bytes(s)
        original = Secret.close
        seen: list[int] = []

        def close_watched(self: Secret) -> None:
            if self is s:
                seen.append(release_under_watch(reader, address, lambda: original(self)))
            else:
                original(self)

        setattr(Secret, "close", close_watched)  # noqa: B010
        try:
            moved = s._moved(SIZE + 1, SIZE)
        finally:
            setattr(Secret, "close", original)  # noqa: B010
        assert len(seen) == 1 and s.closed, seen
        hits += seen[0]
        moved.close()
    elif how == "exit":
        # the interpreter-exit wipe (an atexit hook), with a secret still open
        s = secret_full()
        hits += release_under_watch(reader, last_bytes(s), _core.wipe_at_exit)
        assert s.closed
    elif how == "region":
        # any allocator.Secure region, tagged with a key of the program's own
        region = RegionGuard(SIZE, allocator=allocator.Secure(backing=params()["backing"]))
        key = PkeyGuard(NA)
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[0:SIZE] = bytes([PATTERN]) * SIZE
        hits += release_under_watch(reader, region.address + SIZE - 8, region.close)
        key.close()
    elif how == "many":
        # more secrets than hardware keys (pku: the first ones are parked)
        secrets = [secret_full(size=64 << 10) for _ in range(16)]
        s = secrets[round_ % len(secrets)]
        hits += release_under_watch(reader, last_bytes(s), s.close)
        for other in secrets:
            other.close()
    elif how == "hook":
        shown: list[bytes] = []

        def hook(address: int, length: int) -> None:
            shown.append(ctypes.string_at(address + length - 4096, 4096))

        s = secret_full(allocator.Secure(backing=params()["backing"], on_before_unmap=hook))
        hits += release_under_watch(reader, last_bytes(s), s.close)
        assert shown == [bytes(4096)], "the hook saw the secret"
    return hits


def case_release_never_opens_the_secret() -> None:
    how = params()["how"]
    room_to_lock(64 << 20)  # a grown secret and its old copy exceed 8 MiB
    snap = snapshot()
    reader = Reader()
    hits = 0
    rounds = int(params().get("rounds", 40))
    for round_ in range(rounds):
        hits += release_once(reader, how, round_)
    reader.stop()
    assert hits == 0, f"another thread read the secret {hits} times while it was released"
    assert_clean(snap, how)
    print("backend", "mprotect" if MPROTECT else "pku", "rounds", rounds)


def case_wiping_costs_what_was_touched() -> None:
    # Closing a secret must not allocate the pages it never touched in order to zero them
    # (the old wipe did: 15 s to close an untouched 1 GiB secret).  Pages it faults in show in
    # the process's peak RSS.
    backing = params()["backing"]
    room_to_lock(256 << 20)
    lock = backing != "mmap-unlocked"
    secure = allocator.Secure(backing="mmap" if backing == "mmap-unlocked" else backing, lock=lock)
    size = 128 << 20
    region = RegionGuard(size, allocator=secure)
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0] = 1  # one page touched
    peak_before = rss_peak_kb()
    region.close()
    key.close()
    grown = rss_peak_kb() - peak_before
    # the old wipe zeroed every page: +128 MiB of peak RSS
    assert grown < 16 << 10, f"closing grew the peak RSS by {grown} KiB"


def rss_peak_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")
