"""The virtual-key cases (issue 11): what the simulated pool's counters say about each case,
from fixed numbers of switches (no calibration, no timing assertion), and how they report.

The pool's policy decides the counts, so they are exact where the policy makes them so
(a working set that fits never misses once warm; 16 keys cycled through 15 numbers always
do) and statistical where the sequence is random (uniform over N keys: about 15/N hits).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from pkeyguard_bench import bench
from pkeyguard_bench.specs import MISS_KEYS, PATTERNS

from pkeyguard import _core

KiB = bench.KiB
MODE = bench.Mode(
    "vkeys-test",
    (4 * KiB,),
    rounds=1,
    sample_s=0.001,
    bulk_bytes=4 * KiB,
    budget_s=1.0,
    miss_sizes=(4 * KiB, 64 * KiB),
    worksets=(1, 8, 15, 16, 64, 1000),
    sequence=1 << 13,
)


@pytest.fixture(scope="module")
def plan() -> Iterator[bench.Plan]:
    built = bench.build(MODE, "mprotect", gib_ok=True, groups=frozenset({"vkey"}))
    try:
        yield built
    finally:
        built.fixtures.close()


def run(case: bench.Case, switches: int, samples: int = 2) -> dict[str, Any]:
    """``samples`` samples of ``switches`` each, as measure() takes them; the pool summary."""
    case.pool.clear()
    case.pool_iterations = 0
    case.iterations = switches
    for _ in range(samples):
        assert bench.sample(case) > 0
    summary = bench.pool_summary(case)
    assert summary is not None
    return summary


def cases(plan: bench.Plan, slug: str) -> dict[int | None, bench.Case]:
    found = {c.keys if c.keys is not None else c.size: c for c in plan.cases if c.slug == slug}
    assert found, f"no {slug} case in the plan"
    return found


def test_plan_has_every_virtual_key_case_with_its_floor(plan: bench.Plan) -> None:
    ids = {c.id for c in plan.cases}
    for t in (1, 2):
        assert {f"vkey.hit_guard/{t}t", f"vkey.hit_set_access_rights/{t}t"} <= ids
        assert {f"floor.nop_cm/{t}t", f"floor.nop_sar/{t}t", f"floor.loop/{t}t"} <= ids
    for size in ("4KiB", "64KiB"):
        assert {f"vkey.miss@{size}/1t", f"floor.retag_c@{size}/1t"} <= ids
    for n in MODE.worksets:
        for pattern in PATTERNS:
            assert {f"vkey.ws_{pattern}@{n}keys/1t", f"floor.ws_{pattern}@{n}keys/1t"} <= ids
    assert not any(c.slug.endswith("_pku") for c in plan.cases), "pku rows on mprotect"
    assert {c.group for c in plan.cases} == {"floor", "vkey"}, "--groups vkey ran others"
    for case in plan.cases:
        assert case.floor is None or case.floor in ids, case.id
        assert (case.pool_mode is not None) == case.slug.startswith("vkey."), case.id


def test_a_hit_takes_nothing(plan: bench.Plan) -> None:
    for slug in ("vkey.hit_guard", "vkey.hit_set_access_rights"):
        for case in cases(plan, slug).values():
            counts = run(case, 500)["counts"]
            assert counts["switches"] == counts["hits"] == 1000, case.id
            assert counts["misses"] == counts["retags"] == counts["parks"] == 0, case.id


def test_every_miss_parks_one_key_and_tags_one(plan: bench.Plan) -> None:
    for size, case in cases(plan, "vkey.miss").items():
        summary = run(case, 64)
        assert summary["hit_rate"] == 0.0, size
        per = summary["per_1000_switches"]
        for name in ("misses", "evictions", "retags", "parks"):
            assert per[name] == 1000, (size, name, per)
        assert per["allocs"] == per["exhausted"] == 0, (size, per)
        assert summary["counts"]["switches"] == 128
    assert MISS_KEYS == 16


@pytest.mark.parametrize("pattern", PATTERNS)
def test_working_sets_that_fit_never_miss_once_warm(plan: bench.Plan, pattern: str) -> None:
    by_keys = cases(plan, f"vkey.ws_{pattern}")
    for n in (1, 8, 15):
        summary = run(by_keys[n], 2000)
        assert summary["counts"]["misses"] == 0, (n, summary)
        assert summary["hit_rate"] == 1.0
        assert summary["per_1000_switches"]["evictions"] == 0


def test_uniform_working_sets_hit_about_15_in_n(plan: bench.Plan) -> None:
    by_keys = cases(plan, "vkey.ws_uniform")
    for n, low, high in ((16, 0.88, 0.98), (64, 0.17, 0.30), (1000, 0.007, 0.025)):
        summary = run(by_keys[n], 3000)
        rate = summary["hit_rate"]
        assert low < rate < high, (n, rate, 15 / n)
        per = summary["per_1000_switches"]
        # One region per key: a miss re-tags one region and (the pool being full) parks one.
        assert per["misses"] == pytest.approx(1000 * (1 - rate))
        assert per["retags"] == per["misses"] == per["evictions"] == per["parks"], (n, per)
        assert per["allocs"] == 0


def test_a_hot_set_of_12_mostly_stays(plan: bench.Plan) -> None:
    by_keys = cases(plan, "vkey.ws_hot")
    rates = {n: run(by_keys[n], 3000)["hit_rate"] for n in (16, 64, 1000)}
    # 80 % of the switches go to 12 keys, which fit in 15 numbers: better than uniform.
    assert rates[16] > 0.85 and rates[64] > 0.5 and rates[1000] > 0.5, rates


def test_table_and_json_report_the_pool_counts(plan: bench.Plan) -> None:
    for case in plan.cases:
        case.iterations = 8
        case.samples = [bench.sample(case)]
    rows = bench.summarize(plan.cases)
    goals = bench.goals(rows, "mprotect", MODE.sizes, MODE.miss_sizes)
    by_id = {g["id"]: g for g in goals}
    # (switch.no_syscall is not in the vkey group: its comparison needs a full run)
    assert set(by_id["vkey_hit"]["values"]) == {
        f"{what} {t}t" for what in ("with g:", "with assoc.set_access_rights(RW):") for t in (1, 2)
    }
    assert set(by_id["vkey_miss"]["values"]) == {"sim 4 KiB", "sim 64 KiB"}
    machine = {
        "cpu_model": "test",
        "cpus": 2,
        "cpus_usable": 2,
        "cpuinfo_flags": {"pku": False, "ospke": False},
        "kernel": "test",
        "implementation": "CPython",
        "python": "3",
        "transparent_hugepage": "never",
        "backend": "mprotect",
        "backend_reason": "test",
    }
    config = {
        "mode": MODE.name,
        "wall_s": 0.0,
        "rounds": 1,
        "sample_s": MODE.sample_s,
        "busy_bytes": 1,
        "pinning": "not pinned",
        "other_cpus_mean": 0.0,
        "other_cpus_per_round": [0.0],
        "stolen_cpus_per_round": [0.0],
        "workset_warm": 256,
        "hot_keys": 12,
        "hot_share": 0.8,
    }
    data = bench.to_json(machine, config, rows, [], goals, [])
    ws = [c for c in data["cases"] if c["slug"] == "vkey.ws_uniform" and c["keys"] == 1000]
    assert len(ws) == 1 and ws[0]["pool"]["pool"] == "sim"
    assert set(ws[0]["pool"]["per_1000_switches"]) >= {"allocs", "retags", "parks", "evictions"}
    out = io.StringIO()
    bench.render(data, out)
    text = out.getvalue()
    assert "## virtual keys: a hit" in text
    assert "## virtual keys: a miss per region size" in text
    assert "## virtual keys: working sets" in text
    assert "[" in text and "vkey_hit" in text
    assert _core.thread_guards() == []


def lru_hit_rate(order: list[int], numbers: int, warm: int) -> float:
    """Hits of a least-recently-used cache of ``numbers`` over ``order`` (twice round, the
    first ``warm`` entries not counted): the policy the pool implements."""
    held: dict[int, None] = {}
    hits = counted = 0
    for i, k in enumerate(order + order):
        hit = k in held
        if hit:
            del held[k]
        elif len(held) >= numbers:
            del held[next(iter(held))]
        held[k] = None
        if i >= warm:
            counted += 1
            hits += hit
    return hits / counted


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_pool_is_lru_over_15_numbers(plan: bench.Plan, pattern: str) -> None:
    by_keys = cases(plan, f"vkey.ws_{pattern}")
    for n in (16, 64):
        model = lru_hit_rate(bench.ws_sequence(n, pattern, MODE.sequence), 15, 256)
        rate = run(by_keys[n], 4000)["hit_rate"]
        assert rate == pytest.approx(model, abs=0.04), (pattern, n, rate, model)


def test_paired_ratio_is_the_median_of_the_rounds_own_ratios() -> None:
    def case(slug: str, samples: list[float], floor: str | None = None) -> bench.Case:
        return bench.Case(
            f"{slug}/1t", slug, slug, "vkey", 1, None, floor, False, "b", lambda n: n,
            samples=samples,
        )  # fmt: skip

    # Round 2 slowed the hit only, round 3 both: the medians pair round 2's hit with
    # another round's floor, the rounds' own ratios do not.
    loop = case("floor.loop", [10.0, 10.0, 10.0])
    floor = case("floor.nop_cm", [60.0, 60.0, 160.0])
    hit = case("vkey.hit_guard", [65.0, 165.0, 175.0], "floor.nop_cm/1t")
    rows = bench.summarize([loop, floor, hit])
    assert rows["vkey.hit_guard/1t"].ratio == pytest.approx((165 - 10) / (60 - 10))
    assert rows["vkey.hit_guard/1t"].paired == pytest.approx(1.1)
