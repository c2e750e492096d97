"""Issue 18, class 11 (names): every public constructor that takes ``name=`` checks it with one
rule, first, without running a method of a ``str`` subclass.  Children:
``children/r2_names.py``."""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_every_constructor_refuses_the_same_names() -> None:
    assert_survived(run_case("r2_names", "case_every_constructor_refuses_the_same_names"))


def test_a_hostile_str_subclass_is_copied_untouched() -> None:
    assert_survived(run_case("r2_names", "case_hostile_str_subclass_is_copied_untouched"))
