"""Call an untrusted native parser while every protected region is out of its reach.

`pkeyguard.isolate(fn, *args)` closes all of this thread's pkeyguard keys for the call.
The parser gets the input it needs (a plain buffer); if it (or an exploit inside it) goes
for the session key, the CPU stops it with SEGV_PKUERR and pkeyguard.faults names the region.
"""

import ctypes
import sys

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, isolate

pkeyguard.faults.enable()
libc = ctypes.CDLL(None)
libc.strtol.restype = ctypes.c_long
libc.strtol.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]

session_key = RegionGuard(32, name="session key")
keys = PkeyGuard(PkeyPermissions.NoAccess, name="sessions")
associated = keys.associate(session_key)
with associated.set_access_rights(PkeyPermissions.ReadWrite) as guard:
    guard.mut_ref_guard()[:] = b"0123456789abcdef0123456789abcdef"

# The "untrusted parser": libc's strtol on attacker-controlled input.
print("parsed:", isolate(libc.strtol, b"12345", None, 10))

if "--attack" in sys.argv:
    # Simulates a parser bug that reads the session key: dies with a report naming it.
    isolate(ctypes.string_at, session_key.address, 32)
