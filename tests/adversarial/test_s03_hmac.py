"""Secret.hmac(msg, digest): "no copy" (docstring: hmac.digest on the revealed bytes)."""

from tests.adversarial.support import assert_survived, attack


def test_hmac_with_a_python_level_digest_constructor_makes_plain_key_copies() -> None:
    """DEFECT: s.hmac(msg, hashlib.blake2b) (any digest that is not a str or an OpenSSL
    constructor: hashlib.blake2b/sha3_* types, a lambda) goes through hmac.digest's
    pure-Python path.  For a key longer than the block size that path builds plain `bytes`
    H(K) padded, H(K)^ipad and H(K)^opad (each enough to compute any HMAC under the key),
    which are never wiped.  Seen deterministically through a trace of hmac.digest's locals.
    Promised (docstring, README table): no copy.  Control: digest="blake2b" (str) is clean."""
    child = attack(
        """
        import hashlib, hmac as _h
        seen = {}
        def tracer(frame, event, arg):
            if frame.f_code is _h.digest.__code__:
                def local(frame, event, arg):
                    if event == "return":
                        seen["key"] = frame.f_locals.get("key")
                    return local
                return local
            return None
        out = {}
        for digest in ("blake2b", hashlib.blake2b):
            seen.clear()
            s = Secret.from_bytes(bytearray(os.urandom(200)))
            sys.settrace(tracer)
            try:
                s.hmac(b"msg", digest)
            finally:
                sys.settrace(None)
            key = seen.get("key")
            name = digest if isinstance(digest, str) else "hashlib." + digest.__name__ + " (ctor)"
            out[name] = type(key).__name__
            if isinstance(key, bytes):
                with s.reveal() as v:
                    hk = hashlib.blake2b(v).digest()
                out[name] += " == H(K)+padding" if key.startswith(hk) else ""
            del key; seen.clear(); s.close()
        print("hmac.digest's key local:", out)
        assert out["blake2b"] != "bytes"
        bad = {k: v for k, v in out.items() if v.startswith("bytes")}
        assert not bad, f"plain bytes copies of key material: {bad}"
        """,
        watchdog=60,
    )
    assert_survived(child)


def test_hmac_with_a_python_level_digest_and_a_short_key_fails_with_an_internal_typeerror() -> None:
    """DEFECT (same root): key <= block size: TypeError "unsupported operand type(s) for +:
    'BytesRef' and 'bytes'" from inside hmac.py instead of a clear refusal."""
    child = attack(
        """
        import hashlib
        s = Secret.from_bytes(bytearray(b"K" * 32))
        try:
            s.hmac(b"m", lambda *a: hashlib.sha256(*a))
            res = "ok"
        except PkeyguardError as e:
            res = "pkeyguard " + type(e).__name__
        except BaseException as e:
            res = f"{type(e).__name__}: {e}"
        print(res)
        assert res.startswith(("ok", "pkeyguard")), res
        """,
        watchdog=30,
    )
    assert_survived(child)


def test_hmac_wrong_digest_types_raise_argument_errors() -> None:
    """MINOR DEFECT: digest=None / 5 / b"sha256" -> AttributeError ('NoneType' object has no
    attribute 'new'); README: wrong-type arguments raise ArgumentTypeError (TypeError)."""
    child = attack(
        """
        s = Secret.from_bytes(bytearray(b"K" * 32))
        bad = {}
        for d in (None, 5, b"sha256"):
            try:
                s.hmac(b"m", d)
                bad[repr(d)] = "accepted"
            except TypeError:
                pass
            except BaseException as e:
                bad[repr(d)] = type(e).__name__
        assert not bad, bad
        """,
        watchdog=30,
    )
    assert_survived(child)


def test_hmac_hostile_inputs_hold() -> None:
    """HELD: unknown names -> ValueError; msg str/None -> TypeError; 512 MiB msg; concurrent
    close from other threads refused then works; closed -> RegionError."""
    child = attack(
        """
        import hmac as _h
        s = Secret.from_bytes(bytearray(b"K" * 32))
        assert s.hmac(b"msg") == _h.digest(b"K" * 32, b"msg", "sha256")
        for d in ("nope", "", "whirlpool"):
            raises(ValueError, s.hmac, b"m", d)
        for m in ("str", None, 5):
            raises(TypeError, s.hmac, m)
        assert len(s.hmac(bytearray(1 << 29))) == 32
        stop = threading.Event()
        def closer():
            while not stop.is_set():
                try:
                    s.close()
                except PkeyguardError:
                    pass
        t = threading.Thread(target=closer); t.start()
        for _ in range(2000):
            try:
                s.hmac(b"m")
            except RegionError:
                break
        stop.set(); t.join(); s.close()
        raises(RegionError, s.hmac, b"m")
        """,
        watchdog=60,
    )
    assert_survived(child)
