"""Run one attack case in this (fresh) interpreter: ``python -m tests.adversarial.run_case
MODULE CASE``.

``MODULE`` is a module under ``tests.adversarial.children`` (a bare name) or any importable
module (a dotted name, e.g. ``tests.unit.children.fork``), ``CASE`` the name of one of its
``case_*`` functions.  A watchdog (``PKEYGUARD_CASE_WATCHDOG`` seconds) ends a hung child with
every thread's traceback; a case that returns prints the marker that
:func:`tests.adversarial.support.assert_survived` looks for.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import sys

#: What a case that returned prints (:func:`tests.adversarial.support.assert_survived` wants
#: it).  Here, not in support.py: this module imports nothing of pkeyguard, so a case that
#: must run without it (or without the sanitizer runtime a sanitized core needs) can.
MARKER = "ADVERSARIAL-OK"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].startswith("case_"):
        print("usage: python -m tests.adversarial.run_case MODULE case_NAME", file=sys.stderr)
        return 2
    os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")
    if os.environ.get("PKEYGUARD_CASE_FAULTHANDLER", "1") == "1":
        faulthandler.enable(all_threads=True)
    faulthandler.dump_traceback_later(
        float(os.environ.get("PKEYGUARD_CASE_WATCHDOG", "60")), exit=True
    )
    name = argv[1] if "." in argv[1] else f"tests.adversarial.children.{argv[1]}"
    module = importlib.import_module(name)
    case = getattr(module, argv[2])
    case()
    print(MARKER, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
