"""Command line: ``python -m pkeyguard {info,demo,bench}``."""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from collections.abc import Sequence

from ._support import support_report


def _cmd_info(args: argparse.Namespace) -> int:
    report = support_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report.get("backend") else 1
    width = max(len(k) for k in report)
    for name, value in report.items():
        if name == "guarantees":
            continue
        print(f"{name:<{width}}  {value}")
    for line in report.get("guarantees", []):
        print(f"  - {line}")
    return 0 if report.get("backend") else 1


def demo(out: object = None) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pkeyguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="what this machine supports and which backend is used")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("demo", help="run the seed example on the active backend")
    sub.add_parser("bench", help="benchmarks (see --help of the subcommand)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from . import _bench

        return _bench.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return _cmd_info(args)
    return demo()


if __name__ == "__main__":
    raise SystemExit(main())
