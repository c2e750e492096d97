"""Secret.hmac(msg, digest): "no copy" (docstring: hmac.digest on the revealed bytes).  The
child programs are ``children/s_hmac.py``."""

from tests.adversarial.support import assert_survived, run_case


def test_hmac_with_a_python_level_digest_constructor_makes_plain_key_copies() -> None:
    """DEFECT: s.hmac(msg, hashlib.blake2b) (any digest that is not a str or an OpenSSL
    constructor: hashlib.blake2b/sha3_* types, a lambda) goes through hmac.digest's
    pure-Python path.  For a key longer than the block size that path builds plain `bytes`
    H(K) padded, H(K)^ipad and H(K)^opad (each enough to compute any HMAC under the key),
    which are never wiped.  Seen deterministically through a trace of hmac.digest's locals.
    Promised (docstring, README table): no copy.  Control: digest="blake2b" (str) is clean."""
    child = run_case(
        "s_hmac",
        "case_hmac_with_a_python_level_digest_constructor",
        watchdog=60,
    )
    assert_survived(child)


def test_hmac_with_a_python_level_digest_and_a_short_key_fails_with_an_internal_typeerror() -> None:
    """DEFECT (same root): key <= block size: TypeError "unsupported operand type(s) for +:
    'BytesRef' and 'bytes'" from inside hmac.py instead of a clear refusal."""
    child = run_case(
        "s_hmac",
        "case_hmac_with_a_python_level_digest_and_a_short_key",
        watchdog=30,
    )
    assert_survived(child)


def test_hmac_wrong_digest_types_raise_argument_errors() -> None:
    """MINOR DEFECT: digest=None / 5 / b"sha256" -> AttributeError ('NoneType' object has no
    attribute 'new'); README: wrong-type arguments raise ArgumentTypeError (TypeError)."""
    child = run_case(
        "s_hmac",
        "case_hmac_wrong_digest_types",
        watchdog=30,
    )
    assert_survived(child)


def test_hmac_hostile_inputs_hold() -> None:
    """HELD: unknown names -> ValueError; msg str/None -> TypeError; 512 MiB msg; concurrent
    close from other threads refused then works; closed -> RegionError."""
    child = run_case(
        "s_hmac",
        "case_hmac_hostile_inputs",
        watchdog=60,
    )
    assert_survived(child)
