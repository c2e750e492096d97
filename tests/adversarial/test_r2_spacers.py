"""Issue 18, class 2 (mapping side): spacer pages (children/r2_spacers.py)."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, run_case
from tests.support import ASAN


# AddressSanitizer's runtime maps memory for its own allocator whenever a size class runs out,
# and aborts ("ERROR: Failed to mmap") when that mmap fails: at vm.max_map_count it dies
# before or after the library does anything, at random.  The plain suite runs this test.
@pytest.mark.skipif(ASAN, reason="the sanitizer runtime aborts at vm.max_map_count itself")
def test_protection_changes_at_the_mapping_limit() -> None:
    child = run_case("r2_spacers", "case_protection_changes_at_the_mapping_limit")
    assert_survived(child)
    assert "opened 8" in child.stdout
