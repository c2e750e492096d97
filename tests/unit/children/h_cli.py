"""Child program of ``tests/unit/test_cli.py``: the command line's program name."""

from __future__ import annotations

import sys

from pkeyguard.__main__ import main
from tests.childhelpers import params, say


def case_program_name_comes_from_argv0() -> None:
    sys.argv = [params()["argv0"], "--help"]
    try:
        main()
    except SystemExit as exc:
        say("exit", exc.code)
