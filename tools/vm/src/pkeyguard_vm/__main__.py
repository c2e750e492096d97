"""``python -m pkeyguard_vm [options] -- COMMAND``: see :mod:`pkeyguard_vm`."""

from pkeyguard_vm import main

raise SystemExit(main())
