"""The adversarial suite runs on the mprotect backend, like tests/unit: every attack runs in a
fresh child interpreter (tests.adversarial.support.run_case), which inherits the choice.

What runs again in the PKU guest is marked ``pku_guest`` by tests/conftest.py (its one list,
``PKU_GUEST``).
"""

from __future__ import annotations

import os

os.environ.setdefault("PKEYGUARD_BACKEND", "mprotect")

import pkeyguard  # the backend is chosen above, before the first import

__all__ = ["pkeyguard"]
