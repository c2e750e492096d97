"""Sizes of the stateful property tests, by hypothesis profile (HYPOTHESIS_PROFILE).

``PKEYGUARD_STATE_EXAMPLES`` overrides the count for one run.
"""

from __future__ import annotations

import os

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")

# Examples of the state machine: on this machine (mprotect) and in the PKU guest, where the
# CPU is emulated and every step is several times slower.
_STATE_EXAMPLES = {"dev": 100, "ci": 1000, "long": 5000}
_STATE_EXAMPLES_GUEST = {"dev": 30, "ci": 100, "long": 500}
# The virtual-key pool's machine (tests/unit/test_virtual_keys.py): issue 11 asks for at
# least 1,000 examples here and 200 in the guest.
_VK_EXAMPLES = {"dev": 100, "ci": 1000, "long": 5000}
_VK_EXAMPLES_GUEST = {"dev": 30, "ci": 200, "long": 1000}


def state_examples(*, guest: bool = False) -> int:
    override = os.environ.get("PKEYGUARD_STATE_EXAMPLES")
    if override:
        return int(override)
    table = _STATE_EXAMPLES_GUEST if guest else _STATE_EXAMPLES
    return table.get(PROFILE, table["dev"])


def vk_state_examples(*, guest: bool = False) -> int:
    override = os.environ.get("PKEYGUARD_VK_STATE_EXAMPLES") or os.environ.get(
        "PKEYGUARD_STATE_EXAMPLES"
    )
    if override:
        return int(override)
    table = _VK_EXAMPLES_GUEST if guest else _VK_EXAMPLES
    return table.get(PROFILE, table["dev"])
