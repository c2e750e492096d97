"""Attack programs that run in a child interpreter, one ``case_*`` function each.

Run by :func:`tests.adversarial.support.run_case` (``python -m tests.adversarial.run_case``).
Modules here are imported only in the child: they may crash it, and that is the point.
"""
