"""The static half of the typestate: user programs under mypy --strict and basedpyright (strict).

``tests/typing/pass_*.py`` must type-check clean; every ``reveal_type(x)  # reveal: T`` must
reveal ``T`` (module prefixes dropped, so ``pkeyguard.views.ScalarRef[int]`` and
``ScalarRef[int]`` compare equal).  ``tests/typing/fail_*.py`` must be rejected: each line
marked ``# E: fragment`` must get an error containing ``fragment``, and no other line may
get one.  ``[mypy]`` / ``[pyright]`` after ``E`` or ``reveal`` limits a mark to one checker.
A mark on a line of its own applies to the next line of code.

Each checker runs once over all programs (both at the same time); the tests then compare
per program and checker.  A must-fail program that starts passing fails here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tokenize
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[2]
TYPING = ROOT / "tests" / "typing"
PROGRAMS = sorted(TYPING.glob("pass_*.py")) + sorted(TYPING.glob("fail_*.py"))
CHECKERS = ("mypy", "pyright")
pytestmark = pytest.mark.typing
Checker = Literal["mypy", "pyright"]

_MARK = re.compile(r"#\s*(E|reveal)(?:\[(mypy|pyright)\])?:\s*(.*?)\s*(?=#\s*(?:E|reveal)\b|$)")
_QUALIFIER = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def normalize(type_text: str) -> str:
    """A revealed type without module prefixes or mypy's inferred-literal ``?``."""
    return _QUALIFIER.sub("", type_text).replace("?", "").strip()


@dataclass
class Marks:
    errors: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    reveals: dict[tuple[str, int], str] = field(default_factory=dict)


def parse_marks(path: Path) -> Marks:
    """The ``# E:`` / ``# reveal:`` marks of a program, per (checker, line)."""
    marks = Marks()
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
    code_lines = sorted({t.start[0] for t in tokens if t.type not in skip})
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        if tok.line.strip().startswith("#"):  # a comment line: marks the next code line
            following = [n for n in code_lines if n > line]
            if not following:
                continue
            line = following[0]
        for kind, only, text in _MARK.findall(tok.string):
            assert text, f"{path.name}:{tok.start[0]}: empty {kind} mark"
            for checker in [only] if only else CHECKERS:
                if kind == "E":
                    marks.errors[(checker, line)].append(text)
                else:
                    key = (checker, line)
                    assert key not in marks.reveals, f"{path.name}:{line}: two reveal marks"
                    marks.reveals[key] = text
    return marks


@dataclass(frozen=True)
class Diagnostic:
    line: int
    severity: str  # "error", "warning", "note" (reveal_type and friends)
    message: str


def _mypy_command(tmp: Path) -> list[str]:
    config = tmp / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\npython_version = 3.11\nmypy_path = {ROOT / 'src'}\n")
    return [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--cache-dir",
        str(tmp / "mypy-cache"),
        "--no-color-output",
        "-O",
        "json",
        *map(str, PROGRAMS),
    ]


def _parse_mypy(out: str) -> dict[str, list[Diagnostic]]:
    found: dict[str, list[Diagnostic]] = defaultdict(list)
    for raw in out.splitlines():
        if not raw.startswith("{"):
            continue
        item = json.loads(raw)
        message = item["message"]
        if item["severity"] == "note":
            m = re.fullmatch(r'Revealed type is "(.*)"', message, re.S)
            if not m:
                continue  # a hint that belongs to an error
            message = m.group(1)
        found[Path(item["file"]).name].append(Diagnostic(item["line"], item["severity"], message))
    return found


def _pyright_command(tmp: Path) -> list[str]:
    config = tmp / "pyrightconfig.json"
    config.write_text(
        json.dumps(
            {
                "typeCheckingMode": "strict",
                "pythonVersion": "3.11",
                "extraPaths": [str(ROOT / "src")],
            }
        )
    )
    return [
        sys.executable,
        "-m",
        "basedpyright",
        "--outputjson",
        "-p",
        str(config),
        *map(str, PROGRAMS),
    ]


def _parse_pyright(out: str) -> dict[str, list[Diagnostic]]:
    found: dict[str, list[Diagnostic]] = defaultdict(list)
    for item in json.loads(out)["generalDiagnostics"]:
        severity, message = item["severity"], item["message"]
        if severity == "information":
            if not message.startswith("Type of "):
                continue
            severity, message = "note", message.rsplit('" is "', 1)[1][:-1]
        line = item["range"]["start"]["line"] + 1
        found[Path(item["file"]).name].append(Diagnostic(line, severity, message))
    return found


@pytest.fixture(scope="module")
def diagnostics(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, list[Diagnostic]]]]:
    """{checker: {program name: diagnostics}}, from one run of each checker."""
    missing = [
        name
        for name, present in (
            ("mypy", importlib.util.find_spec("mypy") is not None),
            ("basedpyright", importlib.util.find_spec("basedpyright") is not None),
        )
        if not present
    ]
    if missing:
        pytest.fail(
            f"the typing tests need {' and '.join(missing)}: pip install -e '.[test,lint]' "
            "(a bare `pytest` leaves these tests out: they are marked `typing`)",
            pytrace=False,
        )
    tmp = tmp_path_factory.mktemp("typing")
    env = dict(os.environ, MYPY_FORCE_COLOR="0", NO_COLOR="1")
    procs = {
        "mypy": subprocess.Popen(
            _mypy_command(tmp), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ),
        "pyright": subprocess.Popen(
            _pyright_command(tmp),
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
    }
    results: dict[str, dict[str, list[Diagnostic]]] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        text = out.decode()
        # 0: clean, 1: errors found (the fail_ programs); anything else is a crash.
        assert proc.returncode in (0, 1), f"{name} crashed ({proc.returncode}): {err.decode()}"
        results[name] = _parse_mypy(text) if name == "mypy" else _parse_pyright(text)
    yield results


def test_programs_exist() -> None:
    names = [p.name for p in PROGRAMS]
    assert sum(n.startswith("pass_") for n in names) >= 4
    assert sum(n.startswith("fail_") for n in names) >= 6


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_program(
    program: Path, checker: Checker, diagnostics: dict[str, dict[str, list[Diagnostic]]]
) -> None:
    marks = parse_marks(program)
    got = diagnostics[checker].get(program.name, [])
    problems: list[str] = []

    expected = {line: frags for (c, line), frags in marks.errors.items() if c == checker}
    reported: dict[int, list[str]] = defaultdict(list)
    for d in got:
        if d.severity in ("error", "warning"):
            reported[d.line].append(d.message)
    for line, messages in sorted(reported.items()):
        if line not in expected:
            problems.append(f"unexpected error at line {line}: {messages}")
    for line, fragments in sorted(expected.items()):
        for fragment in fragments:
            if not any(fragment in m for m in reported.get(line, [])):
                problems.append(
                    f"line {line}: expected an error containing {fragment!r}, "
                    f"got {reported.get(line) or 'none'}"
                )

    revealed = {d.line: d.message for d in got if d.severity == "note"}
    for (c, line), want in sorted(marks.reveals.items()):
        if c != checker:
            continue
        have = revealed.get(line)
        if have is None:
            problems.append(f"line {line}: no reveal_type output (expected {want!r})")
        elif normalize(have) != normalize(want):
            problems.append(f"line {line}: revealed {have!r}, expected {want!r}")

    if program.name.startswith("fail_"):
        assert expected, f"{program.name} marks no error for {checker}"
    else:
        assert not expected, f"{program.name} is a pass_ program but marks errors"
        assert any(c == checker for c, _ in marks.reveals), f"{program.name} reveals nothing"
    assert not problems, f"{checker} on {program.name}:\n  " + "\n  ".join(problems)


def test_marks_parser(tmp_path: Path) -> None:
    """The harness itself: marks attach to the right lines, docstrings are not marks."""
    program = tmp_path / "prog.py"
    program.write_text(
        '"""# E: not a mark in a docstring"""\n'
        "x = 1  # E[mypy]: one  # E[pyright]: two\n"
        "# reveal: int\n"
        "\n"
        "y = x  # E: three\n"
    )
    marks = parse_marks(program)
    assert dict(marks.errors) == {
        ("mypy", 2): ["one"],
        ("pyright", 2): ["two"],
        ("mypy", 5): ["three"],
        ("pyright", 5): ["three"],
    }
    assert marks.reveals == {("mypy", 5): "int", ("pyright", 5): "int"}
    assert normalize("pkeyguard.views.ScalarRef[ctypes.c_uint32]") == "ScalarRef[c_uint32]"
    assert normalize("Literal[pkeyguard._permissions.PkeyPermissions.ReadWrite]?") == (
        "Literal[ReadWrite]"
    )
