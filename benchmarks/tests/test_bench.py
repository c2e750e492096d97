"""``python -m pkeyguard_bench``: every case runs and reports positive numbers.

No timing assertions: the figures depend on the machine.  The run is in-process (the
unit suite's backend, mprotect), in the quick mode the CI uses.
"""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path

import pytest
from pkeyguard_bench import _floor, bench
from pkeyguard_bench.specs import WORKING_SETS

from pkeyguard import _core

SIZES = ("4KiB", "1MiB", "64MiB")  # --quick: no 1 GiB region
MISS_SIZES = ("4KiB", "64KiB", "1MiB")  # --quick: 1, 16 and 256 pages

PER_THREAD = [
    "floor.loop",
    "floor.nop_cm",
    "floor.call_cm",
    "floor.class_attr",
    "switch.lookup",
    "switch.enum_attr",
    "floor.nop_sar",
    "vkey.hit_guard",
    "vkey.hit_set_access_rights",
]
PER_SIZE = [
    "floor.mprotect_c",
    "switch.guard",
    "switch.set_access_rights",
    "alt.mprotect_ext",
    "alt.mprotect_ctypes",
]
ONE_THREAD = [
    "scalar.view_read",
    "scalar.view_write",
    "scalar.mv_read",
    "scalar.mv_write",
    "scalar.mv_typed_read",
    "scalar.mv_typed_write",
    "bulk.plain_copy",
    "bulk.plain_copy_in",
    "bulk.plain_copy_out",
    "bulk.plain_bytes",
    "bulk.copy_in_mv",
    "bulk.copy_in_value",
    "bulk.copy_out_mv",
    "bulk.copy_out_bytes",
    "secret.reveal_mmap",
    "secret.reveal_mmap_100",
]
PER_MISS_SIZE = ["floor.retag_c", "vkey.miss"]
PER_WORKSET = ["floor.ws_hot", "floor.ws_uniform", "vkey.ws_hot", "vkey.ws_uniform"]


def expected_ids(backend: str) -> set[str]:
    per_thread = list(PER_THREAD)
    per_miss, per_workset = list(PER_MISS_SIZE), list(PER_WORKSET)
    if backend == "pku":
        per_thread += ["floor.rdpkru", "floor.wrpkru_pair", "alt.pkey_set"]
        per_thread += ["vkey.pinned_pku", "vkey.hit_pku"]
        per_miss.append("vkey.miss_pku")
        per_workset += ["vkey.ws_hot_pku", "vkey.ws_uniform_pku"]
    else:
        per_thread.append("switch.no_syscall")
    ids = {f"{slug}/{t}t" for slug in per_thread for t in (1, 2)}
    ids |= {f"{slug}@{size}/{t}t" for slug in PER_SIZE for size in SIZES for t in (1, 2)}
    ids |= {f"{slug}/1t" for slug in ONE_THREAD}
    ids |= {f"{slug}@{size}/1t" for slug in per_miss for size in MISS_SIZES}
    ids |= {f"{slug}@{n}keys/1t" for slug in per_workset for n in WORKING_SETS}
    return ids


def test_quick_json_has_every_case_with_positive_numbers(
    capsys: pytest.CaptureFixture[str], no_leaks: None, backend_name: str
) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    ids = {c["id"] for c in data["cases"]}
    missing = expected_ids(backend_name) - ids
    assert not missing, f"cases missing from the JSON: {sorted(missing)}"
    for case in data["cases"]:
        where = case["id"]
        assert case["iterations"] >= 1, where
        assert case["samples_ns"], where
        assert all(s > 0 for s in case["samples_ns"]), where
        assert case["median_ns"] > 0, where
        assert case["min_ns"] > 0, where
        if case["floor"] is not None:
            assert case["floor"] in ids, f"{where}: unknown floor {case['floor']}"

    machine = data["machine"]
    assert machine["backend"] == backend_name
    assert machine["backend_reason"]
    assert machine["python"] and machine["cpu_model"]
    assert set(machine["cpuinfo_flags"]) == {"pku", "ospke"}
    assert data["schema"] == 3
    for case in data["cases"]:
        pool = case["pool"]
        assert (pool is not None) == case["slug"].startswith("vkey."), case["id"]
        if pool is not None:
            assert pool["counts"]["switches"] == pool["iterations"] > 0, case["id"]
    assert data["config"]["pools_end"]["backend"]["logical"] >= 0
    assert data["config"]["mode"] == "quick"
    assert data["config"]["rounds"] >= 3
    assert data["config"]["busy_sweeps"] > 0, "the busy thread never ran"
    assert data["derived"] and data["goals"]
    assert all(g["status"] in ("met", "MISSED", "n/a") for g in data["goals"])
    assert _core.thread_guards() == []


def test_table_output_names_machine_and_goals(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--rounds", "1", "--no-pin"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "backend:" in out
    assert "## switch pairs, 1 thread" in out and "## switch pairs, 2 threads" in out
    assert "## goals" in out


def test_plot_without_matplotlib_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None: "import matplotlib" fails
    assert bench.main(["--quick", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err
    assert not (tmp_path / "p.png").exists()


def test_mprotect_pairs_floor_restores_the_pages() -> None:
    length = 2 * mmap.PAGESIZE
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    address = _floor.mmap_anon(length, rw)
    try:
        _floor.touch_pages(address, length, 7)
        ns = _floor.mprotect_pairs(address, length, 0, rw, 10)  # PROT_NONE, then RW
        assert ns > 0
        _floor.touch_pages(address, length, 8)  # still writable: the pair ended on RW
        with pytest.raises(OSError, match="mprotect"):
            _floor.mprotect_pairs(address + 1, length, rw, 0, 1)  # unaligned: EINVAL
    finally:
        _floor.munmap(address, length)


def test_pkru_floors_refuse_without_ospke() -> None:
    if _floor.cpuid_flags()[1]:
        pytest.skip("the OS enabled PKU here (OSPKE): the refusal path does not apply")
    with pytest.raises(RuntimeError, match="OSPKE"):
        _floor.rdpkru_loop(1)
    with pytest.raises((RuntimeError, ValueError)):
        _floor.wrpkru_pairs(1, 1)


def test_groups_option_refuses_unknown_groups(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--groups", "vkey,nope"])
    assert exc.value.code == 2
    assert "--groups: choose from" in capsys.readouterr().err


def test_groups_option_runs_those_rows_and_their_floors(
    capsys: pytest.CaptureFixture[str], no_leaks: None
) -> None:
    assert bench.main(["--quick", "--rounds", "1", "--no-pin", "--groups", "secret", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["group"] for c in data["cases"]} <= {"secret", "floor"}
    assert {c["slug"] for c in data["cases"] if c["group"] == "floor"} == {"floor.loop"}
    assert data["config"]["groups"] == ["secret"]
