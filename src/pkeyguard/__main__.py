"""Command line: what this machine supports, and the seed example end to end."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ._backend import X86_64_MACHINES, no_pku_reason
from ._support import support_report

DESCRIPTION = """\
pkeyguard: hardware-enforced memory protection with Linux memory protection keys.

commands:
  info    what this CPU and kernel support, which backend pkeyguard uses and why
  demo    the seed example end to end, on the backend in use
"""


def _prog() -> str:
    """``pkeyguard`` for the console script, ``python -m pkeyguard`` for the module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pkeyguard"
    return "python -m pkeyguard" if name in ("__main__.py", "-c", "") else name


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def render_info(report: dict[str, Any], out: TextIO) -> None:
    """The support report, for people."""
    w = out.write
    w(f"pkeyguard {report['version']} on {report['implementation']} {report['python']}, ")
    w(f"Linux {report['kernel']} ({report['machine']})\n\n")
    if report.get("backend") is None:
        w(f"backend:          none: {report.get('error')}\n")
    else:
        forced = " (forced)" if report["forced"] else ""
        w(f"backend:          {report['backend']}{forced}: {report['reason']}\n")
        w(f"rights:           {'per thread' if report['per_thread'] else 'process-wide'}\n")
        if report["backend"] == "pku":
            ks = report["key_stats"]
            w(f"keys:             {report['keys_open']} open (virtual: no limit); ")
            w(f"{ks['hardware_held']} hardware keys held by pkeyguard ")
            w(f"({ks['pinned']} pinned, {ks['quarantined']} quarantined), ")
            w(f"{report['keys_free']} more free in the kernel; {ks['parked']} keys parked\n")
            w(f"key switches:     {ks['switches']} ({ks['hits']} hits, {ks['misses']} misses), ")
            w(f"{ks['evictions']} evictions, {ks['retags']} regions re-tagged, ")
            w(f"{ks['exhausted']} refused (KeyExhaustedError)\n")
            w(f"PKRU (this thread): {report['pkru']}\n")
        else:
            w(f"keys:             logical (no limit), {report['keys_open']} open\n")
        w(f"secret memory:    {report['secret_memory']}: {report['secret_memory_reason']}\n")
    w("\n")
    w(f"CPU:              {report['cpu_model']}\n")
    if report["machine"] in X86_64_MACHINES:
        w(f"  pku (CPUID):    {_yes(report['cpuid']['pku'])}, ")
        w(f"in /proc/cpuinfo: {_yes(report['cpuinfo_flags']['pku'])}\n")
        w(f"  ospke (CPUID):  {_yes(report['cpuid']['ospke'])}, ")
        w(f"in /proc/cpuinfo: {_yes(report['cpuinfo_flags']['ospke'])}\n")
        config = report["kernel_config"] or "unknown (no readable kernel config)"
        w(f"kernel config:    {config}\n")
    else:
        # No CPUID, and the x86 kernel option means nothing here (under qemu-user,
        # /proc/cpuinfo and /boot are even the x86 host's).
        w(f"  protection keys: {no_pku_reason(report['machine'])}\n")
    if report["env_backend"]:
        w(f"PKEYGUARD_BACKEND={report['env_backend']}\n")
    if report.get("guarantees"):
        w("\nwhat this backend guarantees:\n")
        for line in report["guarantees"]:
            w(f"  - {line}\n")


def _cmd_info(args: argparse.Namespace, outcome: _Outcome) -> int:
    report = support_report()
    # Known before the first write: a reader that goes away cannot turn it into a success.
    outcome.status = 0 if report.get("backend") else 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render_info(report, sys.stdout)
    return outcome.status


def demo() -> int:
    """The seed README's example, end to end, on whatever backend is active."""
    from . import AccessPermissions, PkeyGuard, PkeyPermissions, RegionGuard, backend

    info = backend()
    print(f"backend: {info.name} ({info.reason})")
    with (
        RegionGuard(ctypes.c_uint32, AccessPermissions.ReadWrite) as region,
        PkeyGuard(PkeyPermissions.NoAccess) as pkey,
    ):
        associated = pkey.associate(region)
        print(f"key {pkey.key} tagged {region.mapped_size} bytes at {region.address:#x}")
        with associated.set_access_rights(PkeyPermissions.ReadWrite) as write_guard:
            value = write_guard.mut_ref_guard()
            value.value = 123
            print(f"Value written: {value.value}")
        print(f"after the write block this thread has {pkey.current_rights().name}")
        with associated.set_access_rights(PkeyPermissions.ReadOnly) as read_guard:
            print(f"Value read: {read_guard.ref_guard().value}")
            try:
                read_guard.mut_ref_guard()  # type: ignore[attr-defined]
            except PermissionError as exc:
                print(f"write view refused under ReadOnly: {exc}")
    print("guarantees of this backend:")
    for line in info.guarantees:
        print(f"  - {line}")
    return 0


class _Outcome:
    """The status a command has settled on before its output is complete: what ``main``
    returns when the reader goes away (``| head -1``) before the rest is written."""

    def __init__(self) -> None:
        self.status = 0


def _run(argv: Sequence[str] | None, outcome: _Outcome) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pkeyguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,demo}")
    p_info = sub.add_parser("info", help="what this machine supports and which backend is used")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("demo", help="run the seed example on the active backend")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "info":
        return _cmd_info(args, outcome)
    return demo()


class _Output:
    """``sys.stdout`` while the command runs: the real one (None when the process started
    with standard output closed, ``>&-``), with every write error remembered, since argparse
    swallows those of ``--help`` and ``--version``."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.error: OSError | None = None
        # Written with os.write where there is a descriptor: an unbuffered TextIOWrapper
        # (python -u) over a full non-blocking pipe drops what EAGAIN refused, silently.
        self.fd: int | None = None
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.fd = stream.fileno()

    def write(self, text: str) -> int:
        if self.stream is None:
            self.error = OSError(errno.EBADF, "standard output is closed")
            raise self.error
        try:
            if self.fd is None:
                return self.stream.write(text)
            data = memoryview(text.encode(self.stream.encoding, self.stream.errors or "strict"))
            while data:
                data = data[os.write(self.fd, data) :]  # EAGAIN raises BlockingIOError
            return len(text)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        if self.stream is None:
            return
        try:
            self.stream.flush()
        except OSError as exc:
            self.error = exc
            raise


def _say(message: str) -> None:
    """One line on standard error, if there is one (``2>&-`` leaves none: then only the exit
    status tells)."""
    err = sys.stderr
    if err is None:
        return
    try:
        err.write(f"{_prog()}: {message}\n")
        err.flush()
    except (OSError, ValueError):
        pass


def _drop_stdout(out: TextIO | None) -> None:
    # Point stdout at /dev/null so that the interpreter's final flush cannot fail again.
    if out is None:
        return  # closed from the start: the interpreter flushes nothing
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _exit_code(code: object) -> int:
    """What ``SystemExit(code)`` exits with."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status.  Every failure is one line on standard
    error and a non-zero status, never a traceback: 1 when the output cannot be written
    (standard output closed, a full disk) or the backend cannot work, 2 for a usage error
    (argparse), 130 for Ctrl-C.  A reader that goes away (``| head -1``) is not a failure:
    the rest of the output is dropped, and the status is the one the command had settled on
    before (0, or 1 for ``info`` on a backend that cannot work)."""
    from ._errors import PkeyguardError

    real = sys.stdout
    out = _Output(real)
    outcome = _Outcome()
    sys.stdout = out  # write() and flush() are all the CLI calls
    try:
        leave: SystemExit | None = None
        try:
            code = _run(argv, outcome)
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            code, leave = _exit_code(exc.code), exc
        out.flush()
        if out.error is not None and code == 0:
            raise out.error
        if leave is not None:
            raise leave  # as argparse meant it, once its output is known to be written
    except BrokenPipeError:
        # The reader went away (`pkeyguard info | head -1`): that is not an error of ours.
        _drop_stdout(real)
        return outcome.status
    except KeyboardInterrupt:
        _drop_stdout(real)
        return 130
    except PkeyguardError as exc:
        # The library refused (a backend that cannot work here, a system call that failed):
        # say which, in one line.
        _drop_stdout(real)
        _say(f"{type(exc).__name__}: {exc}")
        return 1
    except OSError as exc:
        # Writing the output failed (`pkeyguard info > /dev/full`, `>&-`): say so in one line.
        _drop_stdout(real)
        _say(f"cannot write the output: {exc.strerror or exc}")
        return 1
    finally:
        sys.stdout = real
    return code


if __name__ == "__main__":
    raise SystemExit(main())
