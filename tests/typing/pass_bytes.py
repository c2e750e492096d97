"""Byte regions: ``RegionGuard(64)`` holds bytes; its views are BytesRef / MutBytesRef.

Must type-check clean under mypy --strict and basedpyright (strict).
"""

import hashlib
from typing import Final, reveal_type

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly


def fill_and_hash() -> str:
    with RegionGuard(64) as region, PkeyGuard() as key:
        reveal_type(region)  # reveal: RegionGuard[bytes]
        assoc = key.associate(region)
        with assoc.set_access_rights(RW) as w:
            mut = w.mut_ref_guard()
            reveal_type(mut)  # reveal: MutBytesRef
            mut[0:5] = b"hello"
            mut[5] = 0x21
            mut.value = bytes(64)
            with memoryview(mut) as mv:
                mv[0:1] = b"H"
        with assoc.set_access_rights(RO) as r:
            ref = r.ref_guard()
            reveal_type(ref)  # reveal: BytesRef
            reveal_type(ref.value)  # reveal: bytes
            size: int = len(ref)
            assert size == 64
            first = ref[0]
            assert first == 0x48
            # the buffer protocol: no copy of the secret for hashlib
            return hashlib.sha256(ref).hexdigest() + bytes(ref).hex()
