"""Child programs of the unit suite: ``case_*`` functions that
:func:`tests.adversarial.support.run_case` runs by name in a fresh interpreter."""
