"""Class 11: asynchronous exceptions.  A SIGALRM timer every 50-200 microseconds raises
KeyboardInterrupt at arbitrary bytecodes inside the library's operations; afterwards no guard
is left on the thread, the key count is back to the start, no anonymous mapping is left and
every secret is unmapped.  The child program: children/c11_signal_storm.py."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case

# The operations each storm interrupts (methods of children/c11_signal_storm.py's Storm).
GROUPS = {
    "guards-and-isolated": ["op_isolated", "op_isolated_allow", "op_guards"],
    "regions-and-keys": ["op_region", "op_guards"],
    "secrets": ["op_secret_bytes", "op_secret_chunks", "op_secret_dropped"],
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_keyboard_interrupt_storm(group: str) -> None:
    """Class 11: a SIGALRM handler raising KeyboardInterrupt every 50-200 us while the child
    loops over isolated(), guard blocks (nested, with memoryviews), RegionGuard(),
    PkeyGuard(), associate()/disassociate(), Secret.from_bytes()/from_chunks()/reveal()/
    close(); afterwards exact accounting: no guard on the thread, keys back to the start, no
    new mapping, no secret mapped; only KeyboardInterrupt (or a pkeyguard error) escapes an
    operation."""
    child = run_case(
        "c11_signal_storm",
        "case_keyboard_interrupt_storm",
        params={"ops": GROUPS[group], "seconds": 3.0, "seed": 11, "extra_keys": 8},
        timeout=90,
        watchdog=60,
    )
    assert_survived(child)
