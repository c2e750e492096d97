"""Issue 18, class 2 (mapping side): spacer pages (children/r2_spacers.py)."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_protection_changes_at_the_mapping_limit() -> None:
    child = run_case("r2_spacers", "case_protection_changes_at_the_mapping_limit")
    assert_survived(child)
    assert "opened 8" in child.stdout
