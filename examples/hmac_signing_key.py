"""Keep an HMAC signing key in protected memory and sign with it without copying it out.

The key lives in a Secret: locked in RAM, out of core dumps, zeroed when closed, and
unreadable (NoAccess) except inside `reveal()` on the thread that reveals it.
"""

import hmac
import os

from pkeyguard import Secret

# In real use: Secret.from_file("/run/secrets/signing-key").
key_material = bytearray(os.urandom(32))
signing_key = Secret.from_bytes(key_material, name="signing key")  # wipes key_material
assert key_material == bytearray(32)


def sign(message: bytes) -> str:
    with signing_key.reveal() as key:
        # hmac.digest takes any buffer: the key is read in place, never copied to bytes
        return hmac.digest(key, message, "sha256").hex()


if __name__ == "__main__":
    signature = sign(b"GET /orders 2026-11-28")
    print(f"{signing_key!r} signature {signature[:16]}...")
    signing_key.close()
