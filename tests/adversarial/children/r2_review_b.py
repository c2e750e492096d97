"""Issue 18, second review (b): Python code that runs between a change in the core and its
completion.

Closing a region ends its association and drops the references the association held: often
the key's last (``PkeyGuard(...).associate(region)`` keeps no other).  The subclass check of
the public classes goes by module name, so a class that claims pkeyguard's module gets a
``__del__`` onto a key; whatever runs there must find the region released, not unbound and
still mapped (where it could bind it again, and the release would then unmap the pages under
a live association).  Closing a key over several regions whose untagging fails must raise the
first failure, built once the key is closed, not one per region from inside the loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import os
import tempfile
from typing import Any

from pkeyguard import MprotectError, PkeyGuard, PkeyguardError, RegionGuard, Secret, _core, _owned
from tests import failinject
from tests.adversarial.childlib import MPROTECT, NA, fork_status, params
from tests.adversarial.children.r2_terminal import _controlling_pty, _Terminal


def case_key_finalizer_during_region_close() -> None:
    outcome: list[str] = []
    kept: list[Any] = []
    region = RegionGuard(ctypes.c_uint32)

    # A subclass is the only way to run Python code when a key is freed (keys take no
    # weakref), and pkeyguard refuses subclasses once imported: this test opens that door
    # through the private seal, to prove the release is complete before any such code runs.
    _owned._sealed = False
    try:

        class Spoofed(PkeyGuard):
            __module__ = "pkeyguard.spoofed"
            __slots__ = ()

            def __del__(self) -> None:
                # the attack: runs when close() drops the key's last reference
                try:
                    key = PkeyGuard(NA)
                    assoc = key.associate(region)
                except PkeyguardError as exc:
                    outcome.append(f"refused: {type(exc).__name__}")
                else:
                    kept.append((key, assoc))
                    outcome.append("bound again while closing")

    finally:
        _owned._sealed = True
    Spoofed(NA).associate(region)
    gc.set_threshold(1)
    region.close()
    gc.set_threshold(700)
    assert len(outcome) == 1, f"the key's __del__ did not run in close(): {outcome}"
    assert outcome[0].startswith("refused"), outcome
    assert region.closed
    print("finalizer ran:", outcome[0])


def case_key_close_untag_failures_first_error() -> None:
    call = "mprotect" if MPROTECT else "pkey_mprotect"
    key = PkeyGuard(NA)
    regions = [RegionGuard(ctypes.c_uint32) for _ in range(4)]
    for r in regions:
        key.associate(r)
    built: list[tuple[int, int]] = []  # (id, live associations of the key) per error built
    original = MprotectError.__init__

    def recording_init(self: MprotectError, *args: Any) -> None:
        built.append((id(self), len(key.regions) if not key.closed else -1))
        original(self, *args)

    MprotectError.__init__ = recording_init  # type: ignore[method-assign,assignment]
    failinject.arm(call, errno.ENOMEM, count=2)
    try:
        key.close()
    except MprotectError as exc:
        raised: MprotectError | None = exc
    else:
        raised = None
    finally:
        MprotectError.__init__ = original  # type: ignore[method-assign]
    assert failinject.failed(call) == 2, failinject.failed(call)
    failinject.reset()
    assert raised is not None, "key.close() hid its untag failures"
    assert raised.errno == errno.ENOMEM and raised.syscall == call, raised
    assert len(built) == 1, f"one error per failed region, the first replaced: {built}"
    assert built[0][0] == id(raised)
    assert built[0][1] == -1, f"the error was built with the key half closed: {built}"
    assert key.closed
    # the regions whose untag failed keep the (closed) key's tag: still listed as associated
    stuck = [r for r in regions if r.association is not None]
    assert len(stuck) == 2, regions
    for r in regions:
        r.close()
        assert r.closed
    print("first error raised:", raised)


class _CountReads:
    """Counts the reads that take the O_NONBLOCK route and the signal-mask calls made."""

    def __init__(self) -> None:
        from pkeyguard import secret as module

        self.module = module
        self.reads = 0
        self.masks = 0
        self._read = module._FdReader._read_nonblocking
        self._mask = module._sigmask

    def __enter__(self) -> _CountReads:
        read, mask = self._read, self._mask

        def counting_read(reader: Any, target: memoryview) -> int | None:
            self.reads += 1
            return read(reader, target)

        def counting_mask(how: int, signals: Any) -> Any:
            self.masks += 1
            return mask(how, signals)

        self.module._FdReader._read_nonblocking = counting_read  # type: ignore[method-assign,assignment]
        self.module._sigmask = counting_mask
        return self

    def __exit__(self, *exc: object) -> None:
        self.module._FdReader._read_nonblocking = self._read  # type: ignore[method-assign]
        self.module._sigmask = self._mask


def case_nonblocking_fifo_read_needs_no_mask() -> None:
    """A FIFO opened by path (no RWF_NOWAIT): the O_NONBLOCK route.  The caller's descriptor
    is non-blocking already: the reads switch nothing and block no signal."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "fifo")
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY)
    os.write(w, b"hunter2")
    os.close(w)
    try:
        with _CountReads() as counts:
            secret = Secret.from_fd(fd)
        assert counts.reads >= 1, "the FIFO was not read through the O_NONBLOCK route"
        assert counts.masks == 0, f"{counts.masks} pthread_sigmask calls for {counts.reads} reads"
        assert not os.get_blocking(fd)
        with secret.reveal() as view:
            assert bytes(view) == b"hunter2"
        secret.close()
    finally:
        os.close(fd)
        os.unlink(path)
        os.rmdir(folder)
    print("reads:", counts.reads, "masks:", counts.masks)


def case_prompt_reads_need_no_mask() -> None:
    """from_prompt reads QuietTerminal's own non-blocking description: no flag switched, no
    signal blocked, no F_GETFL per read."""
    master, _slave = _controlling_pty()
    terminal = _Terminal(master)
    try:
        with _CountReads() as counts:
            getfl = 0
            real_fcntl = fcntl.fcntl

            def counting_fcntl(fd: int, cmd: int, *args: Any) -> Any:
                nonlocal getfl
                getfl += cmd == fcntl.F_GETFL
                return real_fcntl(fd, cmd, *args)

            fcntl.fcntl = counting_fcntl  # type: ignore[assignment]
            try:
                for _ in range(5):
                    Secret.from_prompt("pw: ").close()
            finally:
                fcntl.fcntl = real_fcntl
    finally:
        terminal.close()
    assert counts.reads >= 5, counts.reads
    assert counts.masks == 0, f"{counts.masks} pthread_sigmask calls for {counts.reads} reads"
    assert getfl == 0, f"{getfl} F_GETFL calls for {counts.reads} reads"
    print("reads:", counts.reads, "masks:", counts.masks)


def case_fork_inside_nested_reveals_is_linear() -> None:
    """A fork with N secrets revealed, nested (N guards on the forking thread's stack): the
    child's handler decides for each secure mapping whether the forking thread writes it.
    It must look only at that thread's guards on the mapping's key (a few steps each), not
    walk the whole stack for each (N * N)."""
    n = params()["n"]
    secrets = [Secret.from_bytes(bytes([i % 251 + 1]) * 32) for i in range(n)]
    with contextlib.ExitStack() as stack:
        for s in secrets:
            stack.enter_context(s.reveal())
        before = _core._walk_steps()

        def check() -> None:
            spent = _core._walk_steps() - before
            assert n <= spent <= 4 * n, f"{spent} guards visited for {n} secrets"
            print("child steps:", spent, flush=True)

        status = fork_status(check)
    assert status == 0, f"fork child: wait status {status}"
    for s in secrets:
        s.close()
    print("forked with", n, "nested reveals")
