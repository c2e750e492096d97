"""The adversarial suite runs on the mprotect backend, like tests/unit: every attack runs in a
fresh child interpreter (tests.adversarial.support.attack), which inherits the choice."""

from __future__ import annotations

import os

os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")

import pkeyguard  # the backend is chosen above, before the first import

__all__ = ["pkeyguard"]
