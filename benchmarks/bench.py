"""Run pkeyguard's benchmark; the same as ``python -m pkeyguard bench`` (see README.md here).

python benchmarks/bench.py [--quick] [--json [FILE]] [--plot FILE.png] [--rounds N]
"""

from __future__ import annotations

import sys

from pkeyguard._bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
