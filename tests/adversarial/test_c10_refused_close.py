"""Class 10: a refused close leaves the object open and can be retried; a dropped Secret
is always wiped; closing one Secret while another is revealed works.  Also the refusal
granularity paragraph: only a guard of the region's own association blocks
region.close()/disassociate()/protect(); entering a guard of an ended association raises
GuardStateError.  The child programs: children/c10_refused_close.py."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case

CHILD = "c10_refused_close"


def test_close_a_secret_while_another_is_revealed() -> None:
    """Class 10: closing one Secret inside another Secret's reveal() block works at once:
    the first is wiped and unmapped, the revealed one is untouched (the old close is
    refused because all secrets share one key, and can never be retried)."""
    assert_survived(
        run_case(CHILD, "case_close_a_secret_while_another_is_revealed", timeout=60, watchdog=30)
    )


def test_refused_secret_close_can_be_retried() -> None:
    """Class 10: Secret.close() inside its own reveal() is refused with a pkeyguard error,
    leaves the secret open and intact, and a later close() wipes and unmaps it (the old
    close spends its one-shot finalizer on the refusal: the retry does nothing and the
    secret is never wiped)."""
    assert_survived(
        run_case(CHILD, "case_refused_secret_close_can_be_retried", timeout=60, watchdog=30)
    )


def test_dropped_secrets_are_always_wiped() -> None:
    """Class 10: a Secret dropped while another one is revealed, one dropped after a refused
    close, and one dropped in a reference cycle are each wiped exactly once and unmapped."""
    assert_survived(
        run_case(CHILD, "case_dropped_secrets_are_always_wiped", timeout=60, watchdog=30)
    )


def test_refused_region_and_key_close_can_be_retried() -> None:
    """Class 10: region.close(), disassociate(), protect() and key.close() refused inside a
    guard change nothing (a property the old code already has), and work afterwards."""
    assert_survived(
        run_case(CHILD, "case_refused_region_and_key_close_can_be_retried", timeout=60, watchdog=30)
    )


def test_refusal_is_per_association() -> None:
    """Class 10 (granularity paragraph): while a guard of region A's association is active,
    region B of the same key can be closed and C disassociated and re-protected; only A's
    close/disassociate/protect (RegionError) and key.close() (KeyStateError) are refused
    (the old code refuses everything on the key)."""
    assert_survived(run_case(CHILD, "case_refusal_is_per_association", timeout=60, watchdog=30))


def test_guard_of_an_ended_association_cannot_be_entered() -> None:
    """Class 10 (granularity paragraph): a guard kept from an association that has ended
    (disassociated, region closed, key closed) raises GuardStateError on entry and changes
    no page rights (the old code enters it and re-protects the key's other regions)."""
    assert_survived(
        run_case(
            CHILD, "case_guard_of_an_ended_association_cannot_be_entered", timeout=60, watchdog=30
        )
    )
