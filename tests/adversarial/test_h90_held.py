"""Attacks on the issue-12 hot path that held (on 3.11.7, 3.12.1, 3.13.0): kept as
regression tests.  The child programs are ``children/h_held.py``."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_guard_freelist_identity_and_resurrection() -> None:
    child = run_case("h_held", "case_guard_freelist_identity_and_resurrection", timeout=90)
    assert_survived(child)


def test_guard_freelist_under_threads_gc_finalizers_and_fork() -> None:
    child = run_case(
        "h_held", "case_guard_freelist_under_threads_gc_finalizers_and_fork", watchdog=90
    )
    assert_survived(child)


def test_rights_metaclass_keeps_enum_behaviour_and_refuses_fakes() -> None:
    child = run_case(
        "h_held",
        "case_rights_metaclass_keeps_enum_behaviour_and_refuses_fakes",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)


def test_scalar_value_slots_convert_check_touch_by_every_spelling() -> None:
    child = run_case(
        "h_held",
        "case_scalar_value_slots_convert_check_touch_by_every_spelling",
        timeout=60,
        watchdog=30,
    )
    assert_survived(child)
