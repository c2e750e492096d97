"""Secret.hmac(msg, digest): "no copy" (the child programs of ``test_s03_hmac.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pkeyguard import PkeyguardError, RegionError, Secret
from tests.adversarial.childlib import raises
from tests.childhelpers import say

Tracer = Callable[[FrameType, str, Any], Any]


def case_hmac_with_a_python_level_digest_constructor() -> None:
    seen: dict[str, object] = {}

    def tracer(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        if frame.f_code is hmac.digest.__code__:

            def local(frame: FrameType, event: str, arg: Any) -> Tracer:
                if event == "return":
                    seen["key"] = frame.f_locals.get("key")
                return local

            return local
        return None

    out: dict[str, str] = {}
    digests: tuple[Any, ...] = ("blake2b", hashlib.blake2b)
    for digest in digests:
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
        del key
        seen.clear()
        s.close()
    say("hmac.digest's key local:", out)
    assert out["blake2b"] != "bytes"
    bad = {k: v for k, v in out.items() if v.startswith("bytes")}
    assert not bad, f"plain bytes copies of key material: {bad}"


def case_hmac_with_a_python_level_digest_and_a_short_key() -> None:
    s = Secret.from_bytes(bytearray(b"K" * 32))
    try:
        s.hmac(b"m", lambda *a: hashlib.sha256(*a))
        res = "ok"
    except PkeyguardError as e:
        res = "pkeyguard " + type(e).__name__
    except BaseException as e:
        res = f"{type(e).__name__}: {e}"
    say(res)
    assert res.startswith(("ok", "pkeyguard")), res


def case_hmac_wrong_digest_types() -> None:
    s = Secret.from_bytes(bytearray(b"K" * 32))
    bad = {}
    wrong: tuple[Any, ...] = (None, 5, b"sha256")
    for d in wrong:
        try:
            s.hmac(b"m", d)
            bad[repr(d)] = "accepted"
        except TypeError:
            pass
        except BaseException as e:
            bad[repr(d)] = type(e).__name__
    assert not bad, bad


def case_hmac_hostile_inputs() -> None:
    s = Secret.from_bytes(bytearray(b"K" * 32))
    assert s.hmac(b"msg") == hmac.digest(b"K" * 32, b"msg", "sha256")
    for d in ("nope", "", "whirlpool"):
        raises(ValueError, s.hmac, b"m", d)
    for m in ("str", None, 5):
        raises(TypeError, s.hmac, m)
    assert len(s.hmac(bytearray(1 << 29))) == 32
    stop = threading.Event()

    def closer() -> None:
        while not stop.is_set():
            with contextlib.suppress(PkeyguardError):
                s.close()

    t = threading.Thread(target=closer)
    t.start()
    for _ in range(2000):
        try:
            s.hmac(b"m")
        except RegionError:
            break
    stop.set()
    t.join()
    s.close()
    raises(RegionError, s.hmac, b"m")
