"""SECURITY.md's threat model names the test that proves each cell: every name must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    table = text[text.index("## Threat model") :]
    table = table[: table.find("\n## ", 1)] if "\n## " in table else table  # its section
    refs = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)*)(?:\[[^\]]*\])?`", table)
    assert len(refs) >= 15, refs
    for path, names in refs:
        source = (ROOT / path).read_text()
        for name in filter(None, names.split("::")):
            assert re.search(rf"^\s*(def|class) {name}\b", source, re.M), f"{path}::{name}"
    for row in re.findall(r"^\| (?!threat|---)(.+)\|$", table, re.M):
        assert row.count(" | ") == 4, f"a row without its five cells: {row[:60]}"
