"""Runs inside a legacy subinterpreter that ``tests/unit/children/h_exports.py`` makes: the
package must refuse to load there (its C core's state is process-wide)."""

from __future__ import annotations

import importlib


def case_in_a_subinterpreter() -> None:
    try:
        importlib.import_module("pkeyguard")
    except ImportError as exc:
        print("refused:", exc, flush=True)
    else:
        print("imported", flush=True)
