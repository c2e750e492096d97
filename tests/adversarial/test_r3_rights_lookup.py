"""Issue 20's hot path (children/r3_rights_lookup.py): an enum on _core.RightsType answers
every lookup as the same enum on a plain EnumType does, cache or not, and nothing it caches is
ever used after it was freed.  Found by an independent attack of 76cf54e: a use-after-free
(SIGSEGV on 3.12), a member class's __get__ and a metaclass's data descriptor ignored."""

from __future__ import annotations

import json

import pytest

from tests.adversarial.support import assert_survived, run_case

CASES = [
    "case_member_class_with_get",
    "case_cached_member_changes_class",
    "case_metaclass_data_descriptor",
    "case_setter_frees_the_member",
]


def result(meta: str, case: str) -> object:
    child = run_case("r3_rights_lookup", case, params={"meta": meta})
    assert_survived(child)
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize("case", CASES)
def test_rights_enum_answers_as_a_plain_enum(case: str) -> None:
    assert result("rights", case) == result("enum", case)


def test_the_attacks_happened() -> None:
    # Each case's first value says its setup took (the cache was filled, the class's value
    # read), on the reference enum too.
    assert result("enum", "case_cached_member_changes_class") == [True, "'via __get__'"]
    assert result("enum", "case_metaclass_data_descriptor") == [True, "'meta property'"]
    assert result("enum", "case_setter_frees_the_member") == [True, ["dict"]]


def test_long_member_name_replaced_under_a_finalizer() -> None:
    got = result("rights", "case_long_name_replaced_under_a_finalizer")
    assert isinstance(got, list) and len(got) == 4, got
    cached, value, seen = got[0], got[1], got[2]
    assert cached is True and value == "replaced" and isinstance(seen, list), got
    # Whenever the old member's finalizer ran, it read a live object: the new value, or the
    # old member (the moment between the dict's change and the class's on 3.12).
    assert all(s in ("'replaced'", f"<E.{'A' * 120}: 1>"[:40]) for s in seen), seen
