"""H3 (pre-existing, not from issue 12; region.py unchanged since pkg): a ctypes scalar
subclass whose class attribute _type_ is reassigned gets a view of the *reassigned* format
over a region sized by ctypes.sizeof().  `_type_ = 'q'` on a c_uint8 subclass gives an
8-byte scalar view over a 1-byte value: writes run 7 bytes past the value.  With
allocator.Secure() this overwrites the canary the library itself placed after the value
(close() raises CanaryError).

Root cause: region._classify() takes the view format from getattr(vt, "_type_") (a mutable
class attribute, not what ctypes sized the type by) and never checks that the format's size
equals ctypes.sizeof(vt).  ctypes' own fixed format is memoryview(vt()).format ("<B" here).

The child programs are ``children/h_type_code.py``.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_a_lying_type_code_cannot_make_a_view_wider_than_its_value() -> None:
    child = run_case(
        "h_type_code",
        "case_a_lying_type_code_cannot_make_a_view_wider_than_its_value",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)
