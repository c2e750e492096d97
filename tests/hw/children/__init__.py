"""Child programs of the hardware suite: ``case_*`` functions that
:func:`tests.adversarial.support.run_case` runs by name in a fresh interpreter (on pku)."""
