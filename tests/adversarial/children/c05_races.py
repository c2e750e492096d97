"""Class 5: races between threads (the child side of test_c05_races.py)."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

from pkeyguard import PkeyGuard, PkeyguardError, RegionError, RegionGuard, _core, allocator
from tests.adversarial.childlib import MPROTECT, RW, assert_clean, params, snapshot
from tests.support import perms_at


def case_two_keys_associate_the_same_regions_on_two_threads() -> None:
    p = params()
    sys.setswitchinterval(1e-6)
    snap = snapshot()
    for round_ in range(p["rounds"]):
        keys = [PkeyGuard(), PkeyGuard()]
        regions: list[RegionGuard[Any]] = [RegionGuard(64) for _ in range(p["regions"])]
        barrier = threading.Barrier(2)
        outcome: dict[int, list[tuple[RegionGuard[Any], str]]] = {0: [], 1: []}

        def run(
            which: int,
            keys: list[PkeyGuard] = keys,
            regions: list[RegionGuard[Any]] = regions,
            barrier: threading.Barrier = barrier,
            outcome: dict[int, list[tuple[RegionGuard[Any], str]]] = outcome,
        ) -> None:
            order = regions if which == 0 else regions[::-1]
            barrier.wait()
            for r in order:
                try:
                    keys[which].associate(r)
                    outcome[which].append((r, "ok"))
                except RegionError:
                    outcome[which].append((r, "refused"))
                except BaseException as exc:
                    outcome[which].append((r, f"{type(exc).__name__}: {exc}"))

        ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        owner: dict[int, PkeyGuard] = {}
        for r in regions:
            got = [{id(x): o for x, o in outcome[i]}[id(r)] for i in range(2)]
            assert sorted(got) == ["ok", "refused"], f"round {round_}: {got} for one region"
            winner = keys[got.index("ok")]
            loser = keys[got.index("refused")]
            assert r.association is not None and r.association.key is winner, (round_, got)
            listed = [a.region for a in winner.regions]
            assert listed.count(r) == 1, (round_, "the winning key does not list the region")
            listed = [a.region for a in loser.regions]
            assert r not in listed, (round_, "the losing key lists the region")
            owner[id(r)] = winner
        # Closing one key must leave the other key's regions NoAccess (no stale tag to undo).
        keys[0].close()
        if MPROTECT:
            for r in regions:
                if owner[id(r)] is keys[1]:
                    assert perms_at(r.address) == "---p", (
                        f"round {round_}: closing key 0 opened a region of key 1"
                    )
        keys[1].close()
        for r in regions:
            r.close()
    assert_clean(snap, "associate race")


OPS = [
    "close_region",
    "close_key",
    "disassociate",
    "key_disassociate",
    "repr_region",
    "repr_assoc",
    "repr_key",
    "guard",
]


def case_concurrent_close_repr_disassociate() -> None:
    p = params()
    sys.setswitchinterval(1e-6)
    snap = snapshot()
    unmaps: dict[int, int] = {}

    def count_unmap(address: int, length: int) -> None:
        unmaps[address] = unmaps.get(address, 0) + 1

    rnd = random.Random(p["seed"])
    problems: list[str] = []
    for round_ in range(p["rounds"]):
        key = PkeyGuard()
        regions: list[RegionGuard[Any]] = [
            RegionGuard(64, allocator=allocator.Secure(lock=False, on_before_unmap=count_unmap))
            for _ in range(3)
        ]
        addresses = [r.address for r in regions]
        assocs = [key.associate(r) for r in regions]
        barrier = threading.Barrier(3)

        def run(
            seed: float,
            key: PkeyGuard = key,
            regions: list[RegionGuard[Any]] = regions,
            assocs: list[Any] = assocs,
            barrier: threading.Barrier = barrier,
        ) -> None:
            rr = random.Random(seed)
            barrier.wait()
            for _ in range(p["ops"]):
                j = rr.randrange(3)
                op = rr.choice(OPS)
                try:
                    if op == "close_region":
                        regions[j].close()
                    elif op == "close_key":
                        key.close()
                    elif op == "disassociate":
                        assocs[j].disassociate()
                    elif op == "key_disassociate":
                        key.disassociate(regions[j])
                    elif op == "repr_region":
                        repr(regions[j])
                    elif op == "repr_assoc":
                        repr(assocs[j])
                    elif op == "repr_key":
                        repr(key)
                    else:
                        with assocs[j].set_access_rights(RW) as g:
                            g.mut_ref_guard()[0] = 1
                except PkeyguardError as exc:
                    if op.startswith("repr"):
                        problems.append(f"{op} raised {type(exc).__name__}: {exc}")
                except BaseException as exc:
                    problems.append(
                        f"{op} raised {type(exc).__module__}.{type(exc).__name__}: {exc}"
                    )

        ts = [threading.Thread(target=run, args=(rnd.random(),)) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not problems, f"round {round_}: {problems[:5]}"
        assert _core.thread_guards() == []
        for r in regions:
            r.close()
        key.close()
        for a in addresses:
            n = unmaps.get(a, 0)
            assert n == 1, f"round {round_}: the region at {a:#x} was released {n} times"
        unmaps.clear()
    assert_clean(snap, "close/repr/disassociate race")
