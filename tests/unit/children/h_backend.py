"""Child programs of ``tests/unit/test_backend.py``: the backend a fresh process chooses under
each ``PKEYGUARD_BACKEND``.  This module asks for the backend only inside the cases."""

from __future__ import annotations

import json

import pkeyguard
from tests.childhelpers import say


def case_auto_selection() -> None:
    i = pkeyguard.backend()
    say(json.dumps([i.name, i.reason, i.forced]))


def case_forcing_pku() -> None:
    try:
        pkeyguard.PkeyGuard()
    except pkeyguard.PkuUnavailableError as exc:
        say("refused:", exc)
    else:
        say("FELL BACK")


def case_forced() -> None:
    i = pkeyguard.backend()
    say(i.name, i.forced)


def case_bad_value() -> None:
    try:
        pkeyguard.backend()
    except pkeyguard.PkeyguardError as e:
        say(e)
