"""The case and goal tables: ids, floors, fixtures and goal arithmetic, without timing.

The pku plan is built (not run) on any machine, so its structure and its goals are checked
here too, on synthetic numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkeyguard_bench import bench
from pkeyguard_bench.specs import CASES, GOALS, GoalSpec, resolve

BENCHMARKS = Path(__file__).resolve().parents[1]
FLOOR_C = BENCHMARKS / "src" / "pkeyguard_bench" / "_floor.c"
PKRU_H = BENCHMARKS.parent / "src" / "pkeyguard" / "_arch_x86_64.h"
BACKENDS = ("mprotect", "pku")
TINY = bench.Mode(
    "tiny",
    (4 * bench.KiB, 64 * bench.KiB),
    rounds=1,
    sample_s=0.001,
    bulk_bytes=64 * bench.KiB,
    budget_s=1.0,
    miss_sizes=(4 * bench.KiB,),
    worksets=(1, 16),
    sequence=64,
)


@pytest.fixture(params=BACKENDS)
def plan(request: pytest.FixtureRequest) -> Iterator[tuple[str, bench.Plan]]:
    backend: str = request.param
    built = bench.build(TINY, backend, gib_ok=True)
    try:
        yield backend, built
    finally:
        built.fixtures.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_slugs_are_unique_per_backend(backend: str) -> None:
    slugs = [spec.slug for spec in CASES if backend in spec.backends]
    assert len(slugs) == len(set(slugs))
    assert all(re.fullmatch(r"[a-z]+\.[a-z0-9_]+", slug) for slug in slugs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_floor_is_a_case_of_the_same_backend(backend: str) -> None:
    slugs = {spec.slug for spec in CASES if backend in spec.backends}
    for spec in CASES:
        if backend in spec.backends and spec.floor is not None:
            floor = resolve(spec.floor, backend)
            assert floor in slugs, f"{spec.slug}: floor {floor} does not run on {backend}"


def test_built_plan_has_unique_ids_and_resolvable_floors(plan: tuple[str, bench.Plan]) -> None:
    backend, built = plan
    ids = [c.id for c in built.cases]
    assert len(ids) == len(set(ids))
    for case in built.cases:
        assert case.floor is None or case.floor in ids, f"{case.id}: floor {case.floor}"
    expected = {spec.slug for spec in CASES if backend in spec.backends} - {
        s["case"] for s in built.skipped
    }
    assert {c.slug for c in built.cases} == expected
    sizes = {c.size for c in built.cases if c.slug == "switch.guard"}
    assert sizes == set(TINY.sizes)
    guard = next(c for c in built.cases if c.slug == "switch.guard")
    assert guard.floor is not None
    assert re.match(rf"{re.escape(resolve('hw', backend))}[@/]", guard.floor)


@pytest.mark.parametrize("goal", GOALS, ids=[g.id for g in GOALS])
def test_goals_read_cases_of_their_backends(goal: GoalSpec) -> None:
    assert goal.reads
    assert goal.values
    for backend in goal.backends:
        slugs = {spec.slug for spec in CASES if backend in spec.backends}
        families = [r for r in goal.values if backend in r.backends]
        assert families, f"{goal.id}: nothing to compute on {backend}"
        for ratio in families:
            for term in (*ratio.num, *ratio.den):
                slug = resolve(term.lstrip("-"), backend)
                assert slug in slugs, f"{goal.id}: {slug} does not run on {backend}"


def _synthetic(built: bench.Plan, nets: dict[str, float]) -> dict[str, bench.Row]:
    """Rows with the given net per slug (1 ns where not given) and per size where keyed so."""
    rows: dict[str, bench.Row] = {}
    for case in built.cases:
        net = nets.get(f"{case.slug}@{case.size}", nets.get(case.slug, 1.0)) * case.threads
        rows[case.id] = bench.Row(case, net, net, net)
    for row in rows.values():
        if row.case.floor is not None:
            row.ratio = row.net / rows[row.case.floor].net
    return rows


def test_pku_goals_on_synthetic_numbers() -> None:
    built = bench.build(TINY, "pku", gib_ok=True)
    try:
        small, big = TINY.sizes
        nets = {
            "floor.nop_cm": 40.0,
            "floor.wrpkru_pair": 30.0,
            f"switch.guard@{small}": 70.0,
            f"switch.guard@{big}": 73.0,
            "switch.set_access_rights": 130.0,
        }
        by_id = {
            g["id"]: g
            for g in bench.goals(_synthetic(built, nets), "pku", TINY.sizes, TINY.miss_sizes)
        }
    finally:
        built.fixtures.close()
    assert [g.id for g in GOALS] == list(by_id)
    assert by_id["mprotect_pair"]["status"] == "n/a"
    # Every net is multiplied by the thread count, so ratios are the same for 1 and 2 threads.
    fw = by_id["framework"]["values"]
    assert fw == pytest.approx(
        {"4 KiB 1t": 1.0, "64 KiB 1t": 1.075, "4 KiB 2t": 1.0, "64 KiB 2t": 1.075}
    )
    assert by_id["framework"]["status"] == "met"
    assert by_id["framework_lookup"]["values"]["4 KiB 1t"] == pytest.approx(2.5)
    assert by_id["framework_lookup"]["status"] == "MISSED"
    # (130 - 30) / (1 + 1): the two CPython floors default to 1 ns here.
    assert by_id["framework_lookup_cpython"]["values"]["4 KiB 1t"] == pytest.approx(50.0)
    ns = by_id["pku_pair_ns"]
    assert ns["values"] == pytest.approx(
        {"4 KiB 1t": 70.0, "64 KiB 1t": 73.0, "4 KiB 2t": 140.0, "64 KiB 2t": 146.0}
    )
    assert ns["status"] == "MISSED" and ns["unit"] == "ns"
    assert by_id["pku_flat"]["values"] == pytest.approx({"max/min": 146.0 / 70.0})
    assert by_id["pku_flat"]["reads"] == ["switch.guard"]
    # (the pinned key's switch defaults to 1 ns too)
    assert by_id["vkey_hit"]["values"]["pku with g: 1t"] == pytest.approx(1.0)
    assert by_id["vkey_miss"]["values"] == pytest.approx({"sim 4 KiB": 1.0, "pku 4 KiB": 1.0})


def test_mprotect_goals_on_synthetic_numbers() -> None:
    built = bench.build(TINY, "mprotect", gib_ok=True)
    try:
        nets = {
            "floor.nop_cm": 40.0,
            "switch.no_syscall": 44.0,
            "switch.lookup": 100.0,
            "floor.call_cm": 70.0,
            "floor.class_attr": 50.0,
            "floor.mprotect_c": 1000.0,
            "switch.guard": 1100.0,
            "scalar.mv_typed_read": 10.0,
            "scalar.view_read": 12.0,
            "bulk.plain_copy": 100.0,
            "bulk.copy_in_mv": 125.0,
            "vkey.hit_guard": 42.0,
            "vkey.hit_set_access_rights": 120.0,
            "floor.nop_sar": 100.0,
            "vkey.miss": 4400.0,
            "floor.retag_c": 4000.0,
            "secret.reveal_mmap": 4000.0,
            "secret.reveal_mmap_100": 6000.0,
        }
        by_id = {
            g["id"]: g
            for g in bench.goals(_synthetic(built, nets), "mprotect", TINY.sizes, TINY.miss_sizes)
        }
    finally:
        built.fixtures.close()
    pair = by_id["mprotect_pair"]
    assert pair["values"] == pytest.approx(
        {"4 KiB 1t": 1.1, "64 KiB 1t": 1.1, "4 KiB 2t": 1.1, "64 KiB 2t": 1.1}
    )
    assert pair["status"] == "met" and pair["threshold"] == 1.15
    assert by_id["framework"]["values"] == pytest.approx(
        {"no-syscall switch 1t": 1.1, "no-syscall switch 2t": 1.1}
    )
    assert by_id["framework_lookup"]["values"]["no-syscall switch + lookup 1t"] == pytest.approx(
        3.6
    )
    assert by_id["framework"]["status"] == "met" and by_id["framework"]["threshold"] == 1.1
    lookup = by_id["framework_lookup_cpython"]
    assert lookup["values"]["no-syscall switch + lookup 1t"] == pytest.approx(144.0 / 120.0)
    assert lookup["status"] == "met"
    assert by_id["scalar"]["values"]["read vs x = mv.cast('I')[0]"] == pytest.approx(1.2)
    assert by_id["bulk"]["values"]["copy_in_mv"] == pytest.approx(0.8)
    assert by_id["bulk"]["status"] == "MISSED"
    assert by_id["pku_pair_ns"]["status"] == by_id["pku_flat"]["status"] == "n/a"
    hit = by_id["vkey_hit"]
    assert hit["values"] == pytest.approx(
        {
            "with g: 1t": 1.05,
            "with g: 2t": 1.05,
            "with g: vs the mprotect switch path 1t": 42.0 / 44.0,
            "with g: vs the mprotect switch path 2t": 42.0 / 44.0,
            "with assoc.set_access_rights(RW): 1t": 1.2,
            "with assoc.set_access_rights(RW): 2t": 1.2,
        }
    )
    assert hit["status"] == "MISSED" and hit["threshold"] == 1.1
    assert by_id["vkey_miss"]["values"] == pytest.approx({"sim 4 KiB": 1.1})
    assert by_id["vkey_miss"]["status"] == "met"
    assert by_id["secret_reveal_flat"]["values"] == pytest.approx({"100 alive vs 2": 1.5})
    assert by_id["secret_reveal_flat"]["status"] == "MISSED"


def test_readme_lists_every_case_and_goal() -> None:
    text = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    missing = [s.slug for s in CASES if f"`{s.slug}" not in text]
    missing += [g.id for g in GOALS if f"`{g.id}`" not in text]
    assert not missing, f"benchmarks/README.md does not list: {missing}"


def _asm(path: Path) -> list[str]:
    return [" ".join(line.split()) for line in path.read_text().splitlines() if "__asm__" in line]


def test_floor_pkru_helpers_match_pkeyguards() -> None:
    if not PKRU_H.exists():
        pytest.skip("not in the pkeyguard repository: src/pkeyguard/_arch_x86_64.h is not here")
    ours, theirs = _asm(FLOOR_C), _asm(PKRU_H)
    assert len(theirs) == 2 and ours == theirs


def test_floor_compiles_with_werror(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required to build pkeyguard-bench"
    include = sysconfig.get_paths()["include"]
    flags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", f"-I{include}"]
    proc = subprocess.run(
        [cc, *flags, "-c", str(FLOOR_C), "-o", str(tmp_path / "out.o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
