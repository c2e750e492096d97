"""Attack programs that run in a child interpreter, one ``case_*`` function each.

Run by :func:`tests.adversarial.support.run_case` (``python -m tests.adversarial.run_case``).
Modules here run their attacks only in the child: they may crash it, and that is the point.
Importing one has no side effects, so a test module may import it for its table of case ids
(e.g. ``c01_view_conversions.CASES``) to keep one list.
"""
