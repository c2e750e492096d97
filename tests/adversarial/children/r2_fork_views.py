"""Issue 18, class 4 (attack round two, F4): a ``memoryview`` of a revealed secret taken
*before* ``fork()``.

A memoryview cannot check the fork generation the way the library's own views do, so the
fork child's handler closes every inherited secure mapping (PROT_NONE, the pku number kept):
touching the memoryview in the child faults instead of reading the zero pages as if they were
the secret (``hmac.digest`` under an all-zero key).  The child's 'with' blocks still exit and
``close()`` still works; a failed ``mprotect`` in the handler leaves the zeros readable (never
anything wider).  Both backings (``params()["backing"]``).
"""

from __future__ import annotations

import errno
import hmac
import os
import signal
import sys

from pkeyguard import Secret, SecretUnavailableError, allocator
from tests import failinject
from tests.adversarial.childlib import fork_status, params

DATA = b"correct horse battery staple, 32"
ZERO_KEY_HMAC = hmac.digest(bytes(len(DATA)), b"message", "sha256")


def make_secret() -> Secret:
    b = str(params()["backing"])
    assert b in ("memfd_secret", "mmap")
    secret = Secret(len(DATA), allocator=allocator.Secure(backing=b))  # type: ignore[arg-type]
    secret.write(0, DATA)
    assert secret.backing == b
    return secret


def page_rights(address: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            span, rights = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return rights
    raise AssertionError(f"{address:#x} is not mapped")


def case_memoryview_from_before_fork_faults_in_child() -> None:
    secret = make_secret()
    with secret.reveal() as view:
        m = memoryview(view)
        address = secret.address

        def child() -> None:
            assert page_rights(address).startswith("---"), page_rights(address)
            # the attack: a key read through the inherited memoryview (zeros on the old code)
            digest = hmac.digest(m, b"message", "sha256")
            verdict = "ZERO-KEY HMAC" if digest == ZERO_KEY_HMAC else "some HMAC"
            print(f"the child read the inherited memoryview: {verdict}", file=sys.stderr)

        status = fork_status(child)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV, (
            f"touching the inherited memoryview did not fault in the child (status {status:#x})"
        )
        assert bytes(m) == DATA  # the parent's pages are untouched
        m.release()
    secret.close()


def case_child_exits_inherited_guard_and_closes() -> None:
    secret = make_secret()
    with secret.reveal() as view:
        m = memoryview(view)
        guard = view.guard

        def child() -> None:
            guard.__exit__(None, None, None)  # the inherited 'with' block ends normally
            try:
                secret.equals(DATA)
            except SecretUnavailableError:
                pass
            else:
                raise AssertionError("an inherited secret was usable in the child")
            m.release()
            secret.close()
            assert secret.closed

        status = fork_status(child)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's check failed (see stderr)"
        assert bytes(m) == DATA
        m.release()
    assert secret.equals(DATA)
    secret.close()


def case_failed_close_in_handler_leaves_zeros() -> None:
    # The handler's mprotect fails: the child's pages keep their rights (zero pages), never
    # anything wider, and the library's own uses are still refused.
    secret = make_secret()
    with secret.reveal() as view:
        m = memoryview(view)
        address = secret.address
        failinject.arm("mprotect", errno.ENOMEM)
        failinject.arm("pkey_mprotect", errno.ENOMEM)

        def child() -> None:
            failed = failinject.failed("mprotect") + failinject.failed("pkey_mprotect")
            assert failed >= 1, "the handler's mprotect was not failed"
            assert not page_rights(address).startswith("---"), page_rights(address)
            assert bytes(m) == bytes(len(DATA)), "the child read something other than zeros"
            try:
                secret.equals(DATA)
            except SecretUnavailableError:
                pass
            else:
                raise AssertionError("an inherited secret was usable in the child")

        if str(params()["backing"]) == "memfd_secret":
            # the hole is filled with closed pages by mmap: no mprotect can fail there
            failinject.reset()
            m.release()
            secret.close()
            print("memfd_secret: nothing to fail")
            return
        status = fork_status(child)
        failinject.reset()
        assert os.waitstatus_to_exitcode(status) == 0, "the child's check failed (see stderr)"
        m.release()
    secret.close()
