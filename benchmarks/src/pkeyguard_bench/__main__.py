"""``python -m pkeyguard_bench [--quick] [--json [FILE]] [--plot FILE.png] [--rounds N]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .bench import main as bench_main

    return bench_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
