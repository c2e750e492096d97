"""Rights in variables: when the checkers still know which guard they get.

``set_access_rights`` picks WriteGuard / ReadGuard / NoAccessGuard from the *Literal* type
of its argument.  A variable keeps that Literal type only if it is declared ``Final``:

    RW: Final = PkeyPermissions.ReadWrite    # WriteGuard under both checkers
    RW = PkeyPermissions.ReadWrite           # pyright: WriteGuard; mypy: AccessGuard, and
                                             # then .mut_ref_guard() is an error under mypy

Rights known only at run time give an AccessGuard, which has neither ref_guard() nor
mut_ref_guard(): narrow the *rights* first (``is``, ``==`` or ``match``); narrowing the guard
with ``isinstance`` works too, but mypy forgets the value type there (WriteGuard[Any]).
``# reveal[mypy]:`` / ``# reveal[pyright]:`` pin where the two checkers differ.
"""

import ctypes
from typing import Any, Final, reveal_type

from pkeyguard import AssociatedRegion, PkeyPermissions, WriteGuard

RW_FINAL: Final = PkeyPermissions.ReadWrite
RW_PLAIN = PkeyPermissions.ReadWrite


def aliases(assoc: AssociatedRegion[ctypes.c_uint32]) -> None:
    reveal_type(assoc.set_access_rights(RW_FINAL))  # reveal: WriteGuard[c_uint32]
    # The subtlety: without Final, mypy widens the alias to PkeyPermissions.
    # reveal[mypy]: PkeyPermissions
    # reveal[pyright]: Literal[ReadWrite]
    reveal_type(RW_PLAIN)
    guard = assoc.set_access_rights(RW_PLAIN)
    # reveal[mypy]: AccessGuard[c_uint32]
    # reveal[pyright]: WriteGuard[c_uint32]
    reveal_type(guard)


def dynamic(assoc: AssociatedRegion[ctypes.c_uint32], rights: PkeyPermissions) -> int:
    reveal_type(assoc.set_access_rights(rights))  # reveal: AccessGuard[c_uint32]
    if rights is PkeyPermissions.ReadWrite:
        with assoc.set_access_rights(rights) as w:
            reveal_type(w)  # reveal: WriteGuard[c_uint32]
            w.mut_ref_guard().value = 1
    match rights:
        case PkeyPermissions.ReadOnly:
            with assoc.set_access_rights(rights) as r:
                reveal_type(r.ref_guard().value)  # reveal: int
        case _:
            pass
    guard = assoc.set_access_rights(rights)
    with guard:
        if isinstance(guard, WriteGuard):
            value = guard.mut_ref_guard().value
            reveal_type(value)  # reveal[mypy]: Any  # reveal[pyright]: int
            return int(value)
    return 0


def untyped(assoc: AssociatedRegion[Any]) -> None:
    # A region whose value type is Any yields views of type Any: never a wrong guess.
    with assoc.set_access_rights(RW_FINAL) as w:
        reveal_type(w.mut_ref_guard())  # reveal: Any
        reveal_type(w.ref_guard())  # reveal: Any
