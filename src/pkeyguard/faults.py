"""Fault reports that explain themselves.

``pkeyguard.faults.enable()`` installs a SIGSEGV handler (in C, async-signal-safe) that,
for a protection-key fault (``SEGV_PKUERR``) or a page-rights fault on a pkeyguard region
(``SEGV_ACCERR``, what the mprotect backend produces), writes to stderr: the access (read
or write) and address, the region's name and bounds, the key, the thread's rights for that
key when the fault happened (from the saved PKRU), and the thread.  It then hands over to
:mod:`faulthandler`, which prints the Python traceback of every thread, and the process
ends as it would have without it (killed by SIGSEGV).
"""

from __future__ import annotations

import faulthandler
import sys

from . import _core

__all__ = ["disable", "enable", "is_enabled"]


def enable(*, all_threads: bool = True) -> None:
    """Install the reporter (idempotent); enables :mod:`faulthandler` first to chain to it."""
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=all_threads)
    _core.faults_install()


def disable() -> None:
    """Put back the handler that was installed before :func:`enable`."""
    _core.faults_uninstall()


def is_enabled() -> bool:
    return _core.faults_installed()
