from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import pkeyguard
from pkeyguard import PkuUnavailableError, _backend, _core
from tests.adversarial.support import MARKER, run_case

CHILD = "tests.unit.children.h_backend"


def test_backend_report_is_consistent() -> None:
    info = pkeyguard.backend()
    assert info.name == "mprotect"  # the unit suite forces it (conftest)
    assert info.per_thread is False and info.hardware_keys == 0 and info.max_keys is None
    assert any("process-wide" in g for g in info.guarantees)


def test_probe_names_what_is_missing() -> None:
    ok, reason = _backend.probe_pku()
    pku, ospke = _core.cpuid_flags()
    machine = platform.machine()
    if machine not in _backend.X86_64_MACHINES:  # arm64 (issue 20): no CPUID to ask
        assert not ok and reason == _backend.no_pku_reason(machine)
    elif not pku:
        assert not ok and "cpu lacks pku" in reason
    elif not ospke:
        assert not ok and "ospke off" in reason
    else:
        assert ok or reason.startswith("pkey_alloc: ")


def test_auto_selection_in_a_fresh_process() -> None:
    child = run_case(CHILD, "case_auto_selection", env={"PKEYGUARD_BACKEND": ""})
    assert child.returncode == 0, child.stderr
    name, reason, forced = json.loads(child.stdout.splitlines()[0])
    ok, expected = _backend.probe_pku()
    assert name == ("pku" if ok else "mprotect") and reason == expected and forced is False


def test_forcing_pku_where_it_cannot_work_raises() -> None:
    ok, reason = _backend.probe_pku()
    if ok:
        pytest.skip("this machine has PKU; tests/hw covers the forced pku backend")
    child = run_case(CHILD, "case_forcing_pku", env={"PKEYGUARD_BACKEND": "pku"})
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("refused: PKEYGUARD_BACKEND=pku")
    assert reason in child.stdout


def test_forced_mprotect_and_bad_value() -> None:
    child = run_case(CHILD, "case_forced", env={"PKEYGUARD_BACKEND": "mprotect"})
    assert child.stdout.split() == ["mprotect", "True", MARKER]
    child = run_case(CHILD, "case_bad_value", env={"PKEYGUARD_BACKEND": "gpu"})
    assert "'gpu' is not a backend" in child.stdout


def test_pkru_instructions_refuse_instead_of_sigill() -> None:
    assert not _core.pku_enabled(), "the unit suite runs on the mprotect backend"
    with pytest.raises(PkuUnavailableError):
        _core.rdpkru()
    with pytest.raises(PkuUnavailableError):
        _core.count_free_keys()


def test_the_core_has_no_raw_memory_primitives() -> None:
    # Writing PKRU, or mprotect/munmap of an address, from Python would bypass every check:
    # the installed library offers none of them (the tests reach the kernel through libc).
    for name in (
        "wrpkru",
        "mprotect",
        "munmap",
        "mmap_anon",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "madvise",
        "mlock",
    ):
        assert not hasattr(_core, name), name


def test_info_json_here() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pkeyguard", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PKEYGUARD_BACKEND": ""},
    )
    report = json.loads(proc.stdout)
    ok, reason = _backend.probe_pku()
    assert report["cpuid"]["pku"] == _core.cpuid_flags()[0]
    if not ok:
        assert report["backend"] == "mprotect" and report["reason"] == reason
        assert report["pkru"] is None


def test_demo_runs_and_names_backend() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pkeyguard", "demo"], capture_output=True, text=True, check=True
    )
    out = proc.stdout
    assert f"backend: {pkeyguard.backend().name}" in out or "backend: pku" in out
    assert "Value written: 123" in out and "Value read: 123" in out
    assert "write view refused under ReadOnly" in out
