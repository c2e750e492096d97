"""pkeyguard-bench: what pkeyguard's rights switches, views and copies cost, each next to a
floor measured in the same run (``python -m pkeyguard_bench``; see benchmarks/README.md).

Not part of pkeyguard: its native helper (:mod:`pkeyguard_bench._floor`) takes raw addresses.
"""

from __future__ import annotations

from .bench import MODES, main, run

__all__ = ["MODES", "main", "run"]
