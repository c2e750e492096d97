"""What a protection fault looks like with pkeyguard.faults enabled.

Run it where PKU exists (or under `pkeyguard-vm -- python examples/crash_report.py`, from tools/vm):
the process dies on purpose, writing through a read-only guard.
"""

import ctypes

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

pkeyguard.faults.enable()

token = RegionGuard(ctypes.c_uint64, name="api-token")
key = PkeyGuard(PkeyPermissions.NoAccess, name="tokens")
associated = key.associate(token)


def refresh_token() -> None:
    with associated.set_access_rights(PkeyPermissions.ReadOnly):
        # a bug: writing while only reading was allowed
        ctypes.c_uint64.from_address(token.address).value = 42


refresh_token()
