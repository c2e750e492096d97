"""Child program of ``test_dev_loop.test_core_builds_and_runs_without_boundslot``: a guard's
enter and exit (by ``with`` and by explicit calls) and its views, against whatever build of
pkeyguard comes first on ``sys.path`` (the test puts a ``PKEYGUARD_BOUNDSLOT=0`` build there).

Run as ``python -m tests.unit.boundslot_child EXPECTED_DIR SLOT_TYPE``: it checks that the
pkeyguard it imported lives under ``EXPECTED_DIR`` and that the type of ``Guard.__enter__``
is named ``SLOT_TYPE``, then prints ``ok``.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, ViewError, _core


def main(expected_dir: str, slot_type: str) -> None:
    where = Path(pkeyguard.__file__).resolve()
    assert where.is_relative_to(Path(expected_dir).resolve()), f"imported {where}"
    enter = type(_core.Guard.__dict__["__enter__"]).__name__
    assert enter == slot_type, f"Guard.__enter__ is a {enter}, expected a {slot_type}"
    with RegionGuard(ctypes.c_uint32) as region, PkeyGuard() as key:
        assoc = key.associate(region)
        with assoc.set_access_rights(PkeyPermissions.ReadWrite) as write:
            view = write.mut_ref_guard()
            view.value = 7
        try:
            _ = view.value
        except ViewError:
            pass
        else:
            raise AssertionError("a view outlived its guard")
        read = assoc.set_access_rights(PkeyPermissions.ReadOnly)  # the methods, called
        assert read.__enter__() is read and read.active
        assert read.ref_guard().value == 7
        read.__exit__(None, None, None)
        assert not read.active and not _core.thread_guards()
        with assoc.set_access_rights(PkeyPermissions.NoAccess):
            assert key.current_rights() is PkeyPermissions.NoAccess
        assoc.disassociate()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
