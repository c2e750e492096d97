# ruff: noqa: E501 (the attacks are child programs in strings; their lines stay whole)
"""fork: every use of an inherited Secret must raise SecretUnavailableError (README
"fork, spawn and multiprocessing"; CHANGELOG: fixed "a fork child read an inherited Secret
as zeros, silently (an HMAC with an all-zero key)").

Note: the prelude's faulthandler watchdog makes a fork child that exits *normally* hang
(CPython: dump_traceback_later does not survive fork), so children leave with os._exit."""

import sys

import pytest

from tests.adversarial.support import assert_survived, attack

BACKINGS = ["memfd_secret", "mmap"]


@pytest.mark.parametrize("backing", BACKINGS)
def test_fork_inside_reveal_child_view_must_not_read_zeros(backing: str) -> None:
    """DEFECT: a fork inside `with secret.reveal() as key:` gives the child a live view that
    silently reads zeros: hmac.digest(key, ...) in the child is an HMAC with an all-zero key,
    exactly the bug the CHANGELOG says is fixed.  Promised: SecretUnavailableError."""
    child = attack(
        """
        import hmac
        from pkeyguard import SecretUnavailableError
        s = Secret(8, allocator=allocator.Secure(backing=PARAMS["backing"]))
        s.write(0, b"PARENTSK")
        r, w = os.pipe()
        with s.reveal() as key:
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    tag = hmac.digest(key, b"msg", "sha256")
                    res = "silent-zero-key" if tag == hmac.digest(bytes(8), b"msg", "sha256") else "other:" + tag.hex()
                except SecretUnavailableError:
                    res = "refused"
                except BaseException as e:
                    res = "raised " + type(e).__name__
                os.write(w, res.encode()); os._exit(0)
            os.close(w)
            os.waitpid(pid, 0)
            res = os.read(r, 200).decode()
        print("child:", res)
        assert res == "refused", f"fork child used the inherited revealed view: {res}"
        """,
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)


@pytest.mark.parametrize("backing", BACKINGS)
def test_every_method_in_fork_child(backing: str) -> None:
    """HELD: reveal/equals/hmac/write/with raise SecretUnavailableError, close works, len/repr
    fine, copy/pickle refused; the parent's secret is intact."""
    child = attack(
        """
        import copy, pickle
        from pkeyguard import SecretUnavailableError
        s = Secret(8, allocator=allocator.Secure(backing=PARAMS["backing"]))
        s.write(0, b"PARENTSK")
        ops = {
            "reveal": lambda: s.reveal().__enter__(),
            "equals": lambda: s.equals(b"\\0" * 8),
            "hmac": lambda: s.hmac(b"m"),
            "write": lambda: s.write(0, b"x"),
            "with": lambda: s.__enter__(),
        }
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = []
            for name, op in ops.items():
                try:
                    op(); out.append(name + ":no-error")
                except SecretUnavailableError:
                    pass
                except BaseException as e:
                    out.append(name + ":" + type(e).__name__)
            len(s); repr(s)
            for f in (copy.copy, pickle.dumps):
                try:
                    f(s); out.append("copied")
                except TypeError:
                    pass
            s.close(); s.close()
            os.write(w, ",".join(out).encode() or b"ok"); os._exit(0)
        os.close(w); os.waitpid(pid, 0)
        res = os.read(r, 500).decode()
        assert res == "ok", res
        with s.reveal() as v:
            assert bytes(v) == b"PARENTSK"
        s.close()
        """,
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)


def test_fork_during_from_stream_from_writer_from_chunks() -> None:
    """HELD: a fork inside readinto / the writer / the chunk iterator: the child gets
    SecretUnavailableError, the parent its full secret."""
    child = attack(
        """
        from pkeyguard import SecretUnavailableError
        def in_child(fn):
            try:
                fn(); return "no-error"
            except SecretUnavailableError:
                return "refused"
        class R:
            n = 0
            def readinto(self, b):
                self.n += 1
                if self.n == 1:
                    b[:4] = b"ABCD"; return 4
                if self.n == 2:
                    STATE["pid"] = os.fork(); b[:4] = b"EFGH"; return 4
                return 0
        STATE = {}
        for kind in ("stream", "writer", "chunks"):
            state = STATE; state.clear()
            def make():
                if kind == "stream":
                    return Secret.from_stream(R())
                if kind == "writer":
                    def wr(b):
                        b[:4] = b"WWWW"; state["pid"] = os.fork()
                    return Secret.from_writer(4, wr)
                def gen():
                    yield b"1234"; state["pid"] = os.fork(); yield b"5678"
                return Secret.from_chunks(gen())
            try:
                s = make(); res = "made"
            except SecretUnavailableError:
                s = None; res = "refused"
            except BaseException:
                if state.get("pid") == 0:
                    os._exit(4)
                raise
            if state["pid"] == 0:
                if s is not None:
                    res = in_child(lambda: s.hmac(b"m"))
                os._exit(0 if res == "refused" else 3)
            _, st = os.waitpid(state["pid"], 0)
            assert st == 0, (kind, st)
            assert s is not None and len(s) in (4, 8)
            s.close()
        """,
        watchdog=30,
    )
    assert_survived(child)


def test_multiprocessing_fork_pool_gets_the_error() -> None:
    """HELD: Pool(fork) hands SecretUnavailableError back; spawn refuses to pickle."""
    child = attack(
        """
        import multiprocessing as mp
        from pkeyguard import SecretUnavailableError
        S = Secret.from_bytes(bytearray(b"PARENTSK"))
        def use(m):
            return S.hmac(m)
        import __main__; __main__.use = use
        faulthandler.cancel_dump_traceback_later()
        with mp.get_context("fork").Pool(1) as p:
            e = raises(SecretUnavailableError, p.apply, use, (b"m",))
        assert len(S.hmac(b"m")) == 32
        """,
        watchdog=60,
    )
    assert_survived(child)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ in Python code needs 3.12")
def test_fork_inside_hmac_msg_buffer_gives_the_child_a_zero_key_hmac() -> None:
    """DEFECT (public API only, Python 3.12+): Secret.hmac(msg) reveals the key, then
    hmac.digest converts msg; a msg whose __buffer__ forks makes the child finish the HMAC
    with the zero pages: s.hmac() in the child silently returns HMAC(all-zero key, msg).
    Promised: SecretUnavailableError on every use in a fork child."""
    import subprocess

    code = r"""
import os, sys, hmac
from pkeyguard import Secret, SecretUnavailableError
s = Secret.from_bytes(bytearray(b"PARENTSK"))
class ForkingMsg:
    pid = None
    def __buffer__(self, flags):
        ForkingMsg.pid = os.fork()
        return memoryview(b"msg")
try:
    tag = s.hmac(ForkingMsg())
    res = ("ZERO-KEY" if tag == hmac.digest(bytes(8), b"msg", "sha256")
           else "real" if tag == hmac.digest(b"PARENTSK", b"msg", "sha256") else "other")
except SecretUnavailableError:
    res = "refused"
if ForkingMsg.pid == 0:
    print("child", res, flush=True); os._exit(0)
os.waitpid(ForkingMsg.pid, 0)
print("parent", res, flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "PKEYGUARD_BACKEND": "mprotect"},
    )
    assert "parent real" in proc.stdout, proc.stdout + proc.stderr
    assert "child refused" in proc.stdout, "child: " + proc.stdout + proc.stderr


def test_fork_from_a_thread_and_grandchildren() -> None:
    """HELD: fork from a non-main thread; a child's own secret is usable there and
    unavailable in the grandchild; closes in descendants never touch the parent's pages."""
    child = attack(
        """
        from pkeyguard import SecretUnavailableError
        A = Secret.from_bytes(bytearray(b"A" * 8))
        def st(s):
            try:
                s.hmac(b"m"); return "ok"
            except SecretUnavailableError:
                return "unavail"
        r, w = os.pipe()
        def thr():
            pid = os.fork()
            if pid == 0:
                B = Secret.from_bytes(bytearray(b"B" * 8))
                g = os.fork()
                if g == 0:
                    res = f"g:{st(A)},{st(B)}"; A.close(); B.close()
                    os.write(w, res.encode() + b";"); os._exit(0)
                os.waitpid(g, 0)
                res = f"c:{st(A)},{st(B)}"; B.close(); A.close()
                os.write(w, res.encode() + b";"); os._exit(0)
            os.waitpid(pid, 0)
        t = threading.Thread(target=thr); t.start(); t.join()
        os.close(w)
        res = os.read(r, 100).decode()
        assert res == "g:unavail,unavail;c:unavail,ok;", res
        assert st(A) == "ok"
        A.close()
        """,
        watchdog=30,
    )
    assert_survived(child)
