"""Attack round two, C3: a Secret whose making fails part-way (the tagging ``mprotect`` or
``pkey_mprotect`` of its new region, its key) leaves nothing behind while the caller still
holds the exception, whose traceback keeps the constructor's frames alive."""

from __future__ import annotations

import errno

from pkeyguard import MprotectError, Secret, allocator
from tests import failinject
from tests.adversarial.childlib import MPROTECT, assert_clean, params, snapshot


def case_failed_secret_leaves_nothing_while_its_error_lives() -> None:
    backing = str(params()["backing"])
    call = "mprotect" if MPROTECT else "pkey_mprotect"
    failures = 0
    for skip in range(8):
        snap = snapshot()
        failinject.arm(call, errno.ENOMEM, skip=skip, count=1)
        try:
            Secret(64, allocator=allocator.Secure(backing=backing))  # type: ignore[arg-type]
        except MprotectError as exc:
            failures += 1
            assert failinject.failed(call) == 1, "the attack: the call was failed"
            held = exc  # the caller keeps the error, and with it the frames
            assert held.__traceback__ is not None
            assert_clean(snap, f"{call} failed at call {skip + 1}, error still held")
        else:
            assert failinject.failed(call) == 0, f"{call} failed at call {skip + 1}, no error"
        finally:
            failinject.reset()
    assert failures >= 1, f"no {call} of Secret() was failed"
    print("failures injected and refused cleanly:", failures)
