"""Attack round two, F1/F2: a guard exit whose ``mprotect`` fails, where no caller holds the
guard (the mprotect backend: on pku an exit is a WRPKRU, which cannot fail).

- F1: ``with secret.reveal() as buf:`` and the guards ``Secret.hmac``, ``equals`` and
  ``write`` enter for themselves.  The block's object is a view, not the guard, so nobody can
  "leave it again".  The exit now retries (then narrows to no access at all); if every try
  fails the guard stays active, and the library retries it: the next exit on the thread, the
  operation's own exit path, and ``close()`` (which ends it for good, then wipes and unmaps).
- F2: the write guard of a fill (``from_bytes``, ``from_chunks``, ``from_stream``,
  ``from_fd``, ``from_writer``) whose exit fails: the fill raises the real
  :class:`MprotectError` (not a ``RegionError`` from the cleanup), and nothing of the secret
  is left mapped.

``params()``: ``count``, how many ``mprotect`` calls the shim fails from the exit on (-1:
every later one); ``op`` / ``fill`` / ``then`` as the cases say.  After the failure the
secret's pages in ``/proc/self/maps`` are closed (``---``) to every thread (on mprotect the
page permission is what another thread's raw read meets), or gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
from collections.abc import Callable
from typing import Any

from pkeyguard import MprotectError, Secret, _core
from tests import failinject
from tests.adversarial.childlib import MPROTECT, params
from tests.support import perms_at

SOURCE = b"TOPSECRET-" * 8


def secret_mappings() -> list[str]:
    with open("/proc/self/maps", encoding="utf-8") as f:
        return [" ".join(line.split()[:2]) for line in f if "secretmem" in line]


def closed(secret: Secret, label: str) -> None:
    """The secret's pages are closed to every thread, and no guard is left on this one."""
    perms = perms_at(secret.address)
    assert perms[:3] == "---", f"{label}: the secret is {perms} (open to every thread)"
    assert _core.thread_guards() == [], f"{label}: guards left: {_core.thread_guards()}"


def arm_exit(skip: int) -> None:
    failinject.arm("mprotect", errno.ENOMEM, skip=skip, count=int(params()["count"]))


def disarm() -> int:
    failed = failinject.failed("mprotect")
    failinject.reset()
    assert failed >= 1, "the shim failed no mprotect: the attack did not happen"
    return failed


def case_reveal_exit() -> None:
    """``with sec.reveal() as buf:`` whose exit fails; then ``then``: another reveal() block,
    or close()."""
    assert MPROTECT
    sec = Secret.from_bytes(bytearray(SOURCE))
    count = int(params()["count"])
    error: MprotectError | None = None
    arm_exit(1)  # call 0 opens (the entry), call 1 is the exit's
    try:
        with sec.reveal() as buf:
            assert bytes(buf[:9]) == b"TOPSECRET"
    except MprotectError as exc:
        error = exc
    disarm()
    if count == 1:  # retried: the exit completed, closed
        assert error is None, error
        closed(sec, "reveal exit with one failure")
    else:
        assert error is not None and error.syscall == "mprotect", error
    if params()["then"] == "reveal":
        with sec.reveal() as buf:  # its exit retries the stuck one under it
            assert bytes(buf[:9]) == b"TOPSECRET"
        closed(sec, "after the next reveal() block")
        sec.close()
    else:
        sec.close()  # not refused: the stuck guard is ended, the secret wiped and unmapped
        assert _core.thread_guards() == []
    assert sec.closed and secret_mappings() == [], secret_mappings()


OPS: dict[str, Callable[[Secret], object]] = {
    "hmac": lambda s: s.hmac(b"message"),
    "equals": lambda s: s.equals(SOURCE),
    "write": lambda s: s.write(0, b"W"),
}


def case_secret_op_exit() -> None:
    """An operation that opens the secret with its own guard, whose exit fails."""
    assert MPROTECT
    sec = Secret.from_bytes(bytearray(SOURCE))
    count = int(params()["count"])
    op = OPS[params()["op"]]
    error: MprotectError | None = None
    arm_exit(1)
    try:
        op(sec)
    except MprotectError as exc:
        error = exc
    if count == -1:  # every try fails: the guard stays active, as open as it was
        assert error is not None and error.syscall == "mprotect", error
        disarm()
        assert _core.thread_guards(), "an exit that failed every try must keep its guard"
        with sec.reveal():  # the next exit on this thread retries it
            pass
    else:  # retried by the core (count 1), or by the operation's own exit path (count 2)
        disarm()
        assert (error is None) == (count == 1), error
    closed(sec, f"{params()['op']} with {count} failure(s)")
    assert sec.equals(SOURCE) == (params()["op"] != "write")
    sec.close()
    assert secret_mappings() == [], secret_mappings()


def _from_fd() -> Secret:
    r, w = os.pipe()
    try:
        os.write(w, SOURCE)
        os.close(w)
        w = -1
        return Secret.from_fd(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


FILLS: dict[str, Callable[[], Secret]] = {
    "from_bytes": lambda: Secret.from_bytes(bytearray(SOURCE)),
    "from_chunks": lambda: Secret.from_chunks([bytearray(SOURCE[:40]), bytearray(SOURCE[40:])]),
    "from_stream": lambda: Secret.from_stream(io.BytesIO(SOURCE)),
    "from_fd": _from_fd,
    "from_writer": lambda: Secret.from_writer(
        len(SOURCE), lambda b: b.__setitem__(slice(None), SOURCE)
    ),
}


def case_fill_exit() -> None:
    """The exit of the write guard that fills the secret fails (call 2: call 0 closes the new
    region, call 1 opens it for the fill)."""
    assert MPROTECT
    fill = FILLS[params()["fill"]]
    before = secret_mappings()
    arm_exit(2)
    error: BaseException | None = None
    secret: Secret | None = None
    try:
        secret = fill()
    except BaseException as exc:  # the type is what is checked
        error = exc
    disarm()
    count = int(params()["count"])
    if count == 1:  # retried: the fill completed, closed
        assert error is None and secret is not None, repr(error)
        closed(secret, "fill with one failure")
        assert secret.equals(SOURCE)
        secret.close()
    else:
        assert type(error) is MprotectError, f"the fill raised {error!r}, not MprotectError"
        assert error.syscall == "mprotect", error
        assert _core.thread_guards() == [], _core.thread_guards()
    with contextlib.suppress(Exception):
        del secret
    left = [m for m in secret_mappings() if m not in before]
    assert left == [], f"the fill left the secret mapped: {left}"


def case_disassociate_a_secrets_region_by_its_key() -> None:
    """F6: ``key.disassociate(region)`` with a Secret's own key (dug out through the
    collector) refuses with the true reason, as ``assoc.disassociate()`` does."""
    import gc

    from pkeyguard import PkeyGuard, RegionError

    sec = Secret.from_bytes(bytearray(SOURCE))
    keys = [o for o in gc.get_objects() if type(o) is PkeyGuard and o.name == "pkeyguard secret"]
    assert len(keys) == 1, keys
    key = keys[0]
    assert key.regions, "the attack needs the key that lists the secret's association"
    for target in (sec._region, sec._region.association):
        assert target is not None
        try:
            key.disassociate(target)  # pyright: ignore[reportArgumentType]
        except RegionError as exc:
            assert "belongs to a Secret" in str(exc), f"a false reason: {exc}"
        else:
            raise AssertionError("a Secret's key re-tagged its region by hand")
    assert sec.equals(SOURCE)
    sec.close()


def _scene(regions: int) -> tuple[list[Any], Any, list[Any]]:
    from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

    key = PkeyGuard(PkeyPermissions.NoAccess)
    rs = [RegionGuard(ctypes.c_uint64) for _ in range(regions)]
    return rs, key, [key.associate(r) for r in rs]


def case_entry_put_back_retried() -> None:
    """A ReadWrite entry widens region 0, fails on region 1, and putting region 0 back fails
    once: the put-back is retried, so the entry fails whole and every region stays closed
    (before, the entry was completed instead, leaving the key open)."""
    from pkeyguard import PkeyPermissions

    assert MPROTECT
    rs, key, assocs = _scene(3)
    g = assocs[0].set_access_rights(PkeyPermissions.ReadWrite)
    failinject.arm("mprotect", errno.ENOMEM, skip=1, count=2)
    try:
        g.__enter__()
    except MprotectError as exc:
        assert exc.syscall == "mprotect", exc
    else:
        raise AssertionError("the entry was completed although its put-back could be retried")
    disarm()
    assert not g.active and _core.thread_guards() == []
    assert [perms_at(r.address) for r in rs] == ["---p"] * 3
    assert not key._mixed
    for r in rs:
        r.close()
    key.close()


def case_stuck_guard_left_by_the_next_exit() -> None:
    """A plain guard whose exit fails every try stays active; the next exit on the thread
    (another guard's) completes it, and leaving it again afterwards is a quiet no-op."""
    from pkeyguard import PkeyPermissions

    assert MPROTECT
    rs, key, assocs = _scene(1)
    g = assocs[0].set_access_rights(PkeyPermissions.ReadWrite)
    g.__enter__()
    failinject.arm("mprotect", errno.ENOMEM, skip=0, count=-1)
    with contextlib.suppress(MprotectError):
        g.__exit__(None, None, None)
        raise AssertionError("the exit reported success although every mprotect failed")
    disarm()
    assert g.active and perms_at(rs[0].address) == "rw-p"
    with assocs[0].set_access_rights(PkeyPermissions.ReadOnly):
        pass
    assert not g.active and _core.thread_guards() == []
    assert perms_at(rs[0].address) == "---p"
    assert g.__exit__(None, None, None) is False  # its exit was completed
    rs[0].close()
    key.close()


def case_view_reapply_is_never_narrowed() -> None:
    """A failed exit leaves region 0 narrowed under a still-active ReadWrite guard whose
    view is on region 0 (``_mixed``).  A view access re-applies ReadWrite first; when that
    fails (``count`` times) the access is refused: the retry of a narrowing must never turn
    a re-apply into no access and let the access fault."""
    from pkeyguard import PkeyPermissions

    assert MPROTECT
    rs, key, assocs = _scene(2)
    g = assocs[0].set_access_rights(PkeyPermissions.ReadWrite)  # its view is on region 0
    g.__enter__()
    v = g.mut_ref_guard()
    v.value = 7
    failinject.arm("mprotect", errno.ENOMEM, skip=1, count=-1)
    with contextlib.suppress(MprotectError):
        g.__exit__(None, None, None)
    disarm()
    assert g.active and key._mixed and perms_at(rs[0].address) == "---p"
    failinject.arm("mprotect", errno.ENOMEM, skip=0, count=int(params()["count"]))
    with contextlib.suppress(MprotectError):
        v.value = 8  # refused, or written once re-applied: never a fault
    disarm()
    v.value = 9  # its own region re-applied (the key's other regions wait for a switch)
    assert v.value == 9 and perms_at(rs[0].address) == "rw-p"
    g.__exit__(None, None, None)
    assert [perms_at(r.address) for r in rs] == ["---p"] * 2
    for r in rs:
        r.close()
    key.close()
