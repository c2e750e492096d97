"""What README's "Using it without a copy" says about consumers, checked: which take the
revealed buffer in place, which keep a copy of their own, and from_writer/hmac.

The cryptography cases need the `cryptography` package (in the `test` extra; the wheel
checks of tools/wheels.sh install only pytest and hypothesis, and skip them).
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from pkeyguard import Secret, StreamError
from tests.support import anon_mappings, new_anon_mappings

KEY = bytes(range(32))


@pytest.fixture
def secret() -> Secret:
    return Secret.from_bytes(bytearray(KEY))


def test_stdlib_consumers_read_the_buffer_in_place(secret: Secret) -> None:
    with secret.reveal() as key:
        assert hmac.digest(key, b"m", "sha256") == hmac.digest(KEY, b"m", "sha256")
        assert hashlib.sha256(key).digest() == hashlib.sha256(KEY).digest()
        assert hashlib.pbkdf2_hmac("sha256", key, b"s", 2) == hashlib.pbkdf2_hmac(
            "sha256", KEY, b"s", 2
        )
        assert hashlib.blake2b(b"m", key=key).digest() == hashlib.blake2b(b"m", key=KEY).digest()
        assert hmac.compare_digest(key, KEY)
        with pytest.raises(TypeError, match="bytes or bytearray"):
            hmac.new(key, b"m", "sha256")  # type: ignore[call-overload]  # insists on a copy
    secret.close()


def test_secret_hmac_is_hmac_digest_without_a_copy(secret: Secret) -> None:
    assert secret.hmac(b"msg") == hmac.digest(KEY, b"msg", "sha256")
    assert secret.hmac(b"msg", "sha512") == hmac.digest(KEY, b"msg", "sha512")
    secret.close()


@pytest.mark.usefixtures("no_leaks")
def test_from_writer() -> None:
    with Secret.from_writer(4, lambda out: out.__setitem__(slice(0, 4), b"abcd")) as s:
        assert s.equals(b"abcd")
    kept: list[memoryview] = []

    def keep(out: memoryview) -> None:
        kept.append(out[:])

    with pytest.raises(StreamError, match="kept the memoryview"):
        Secret.from_writer(4, keep)
    kept.clear()

    def boom(out: memoryview) -> None:
        out[:2] = b"xx"
        raise OSError("derivation failed")

    before = anon_mappings()
    with pytest.raises(OSError, match="derivation failed"):
        Secret.from_writer(4, boom)
    assert not new_anon_mappings(before, anon_mappings())


def test_cryptography_consumers(secret: Secret) -> None:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as chmac
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    # cryptography's types say bytes | bytearray | memoryview: a memoryview of the revealed
    # buffer, released with the block, satisfies them (and is no copy)
    with secret.reveal() as revealed, memoryview(revealed) as key:
        mac = chmac.HMAC(key, hashes.SHA256())  # takes the buffer
        mac.update(b"m")
        assert mac.finalize() == hmac.digest(KEY, b"m", "sha256")
        aead = AESGCM(key)  # keeps a copy of its own: it outlives the block
        signer = Ed25519PrivateKey.from_private_bytes(key)  # so does this one
    # After the block, with the secret closed, both still work: they hold their own copies.
    secret.close()
    nonce = os.urandom(12)
    assert AESGCM(KEY).decrypt(nonce, aead.encrypt(nonce, b"data", None), None) == b"data"
    assert len(signer.sign(b"m")) == 64
    # HKDF writes its output straight into a new secret: the derived key is never bytes.
    ikm = Secret.from_bytes(bytearray(KEY))
    with ikm.reveal() as revealed, memoryview(revealed) as material:
        derived = Secret.from_writer(
            32, lambda out: HKDF(hashes.SHA256(), 32, None, b"ctx").derive_into(material, out)
        )
    assert derived.equals(HKDF(hashes.SHA256(), 32, None, b"ctx").derive(KEY))
    derived.close()
    ikm.close()
