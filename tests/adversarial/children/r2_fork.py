"""Issue 18, class 4: objects made before ``fork()`` check the fork when they are *used*.

A fork child has zero pages (or a refilled hole) where the parent's secret memory was.  A
``reveal()`` guard, a guard over an ``allocator.Secure`` region, or a guard active across
the fork, made in the parent and used in the child, must raise
``SecretUnavailableError`` instead of handing the child the zero pages as if they were the
secret (``hmac.digest`` with an all-zero key).  Both backings (``params()["backing"]``).
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Callable

from pkeyguard import (
    PkeyGuard,
    RegionGuard,
    Secret,
    SecretUnavailableError,
    allocator,
    isolated,
)
from tests.adversarial.childlib import NA, RW, fork_status, params

DATA = b"correct horse battery staple"


def make_secret() -> Secret:
    secret = Secret(len(DATA), allocator=allocator.Secure(backing=backing()))
    secret.write(0, DATA)
    assert secret.backing == backing()
    return secret


def backing() -> allocator.Backing:
    b = str(params()["backing"])
    assert b in ("memfd_secret", "mmap")
    return b  # type: ignore[return-value]


def in_child(check: Callable[[], None]) -> None:
    """Run ``check`` in a fork child; fail here unless it returned normally."""
    status = fork_status(check)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's check failed (see stderr)"


def refused(use: Callable[[], object], what: str) -> None:
    try:
        use()
    except SecretUnavailableError:
        return
    raise AssertionError(f"{what}: the fork child used the zero pages as the secret")


def case_reveal_guard_made_before_fork() -> None:
    secret = make_secret()
    guard = secret.reveal()  # made in the parent

    def child() -> None:
        def use() -> None:
            with guard as buf:
                hmac.digest(buf, b"message", "sha256")

        refused(use, "a reveal() guard made before the fork")
        refused(lambda: secret.hmac(b"message"), "Secret.hmac")
        refused(lambda: secret.equals(DATA), "Secret.equals")
        refused(lambda: secret.write(0, b"x"), "Secret.write")
        refused(secret.reveal, "Secret.reveal")
        secret.close()  # closing works

    in_child(child)
    with guard as buf:  # the parent's guard still works in the parent
        assert bytes(buf) == DATA
    secret.close()


def case_secure_region_guard_made_before_fork() -> None:
    region = RegionGuard(64, allocator=allocator.Secure(backing=backing()))
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0:4] = b"s3cr"
    writer = assoc.set_access_rights(RW)  # made in the parent

    def child() -> None:
        def use() -> None:
            with writer as g:
                g.ref_guard().tobytes()

        refused(use, "a guard over secure memory made before the fork")
        assert not writer.active and key.active_guards == 0

    in_child(child)
    with writer as g:
        assert g.ref_guard().tobytes()[:4] == b"s3cr"
    assoc.disassociate()
    region.close()
    key.close()


def case_guard_active_across_fork() -> None:
    """The forking thread's guard stays active in the child (its block can end there), but
    a view taken from it in the child must not read the zero pages."""
    region = RegionGuard(64, allocator=allocator.Secure(backing=backing()))
    key = PkeyGuard(NA)
    assoc = key.associate(region)
    with assoc.set_access_rights(RW) as g:
        g.mut_ref_guard()[0:4] = b"s3cr"

        def child() -> None:
            refused(g.ref_guard, "a new view of a guard active across the fork")
            refused(lambda: g.mut_ref_guard()[0:1], "a new write view")

        in_child(child)
        assert g.ref_guard().tobytes()[:4] == b"s3cr"
    assoc.disassociate()
    region.close()
    key.close()


def case_isolated_handle_made_before_fork() -> None:
    """An isolated() handle made in the parent and entered in the child closes the child's
    keys; nothing of the parent's secret is handed out."""
    secret = make_secret()
    mine = PkeyGuard(NA)
    iso = isolated()

    def child() -> None:
        with iso as keys:
            assert mine in keys and len(keys) >= 1
        with contextlib.suppress(SecretUnavailableError):
            secret.hmac(b"m")
            raise AssertionError("Secret.hmac in the child")

    in_child(child)
    secret.close()
    mine.close()
