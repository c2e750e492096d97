# ruff: noqa: E501, UP031 (the attacks are child programs in strings; their lines stay whole)
"""Trickling streams (cost), from_prompt on a pty, exit with daemons, drop inside reveal."""

import os
import sys

import pytest

from tests.adversarial.support import assert_survived, attack

ROOT = str(__import__("pathlib").Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("mode", ["ok", "long", "sigint", "empty"])
def test_from_prompt_on_a_pty(mode: str) -> None:
    """HELD: no echo, echo restored after Ctrl-C / too long / empty; the over-long line is
    drained, not left for the next reader."""
    code = r"""
import os, sys, pty, time, termios, select
sys.path.insert(0, %r)
mode = %r
pid, master = pty.fork()
if pid == 0:
    from pkeyguard import Secret
    fd = os.open("/dev/tty", os.O_RDWR)
    echo = lambda: bool(termios.tcgetattr(fd)[3] & termios.ECHO)
    try:
        s = Secret.from_prompt("Pw: ", **({"max_size": 8} if mode == "long" else {}))
        print("GOT", len(s), s.equals(b"hunter2"), flush=True)
    except BaseException as e:
        print("RAISED", type(e).__name__, flush=True)
    print("ECHO", echo(), flush=True)
    os._exit(0)
def rd(t):
    out = b""; end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.05)
        if r:
            try:
                out += os.read(master, 1000)
            except OSError:
                break
    return out
out = rd(1.5)
os.write(master, {"ok": b"hunter2\n", "long": b"0123456789ABCDEF\n", "sigint": b"\x03", "empty": b"\n"}[mode])
out += rd(2.0)
os.waitpid(pid, 0)
print(out.decode(errors="replace"))
""" % (ROOT, mode)
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PKEYGUARD_BACKEND": "mprotect"},
    )
    out = proc.stdout
    assert "hunter2" not in out.split("GOT")[0].split("Pw:")[-1], out  # not echoed
    assert "ECHO True" in out, out
    expect = {
        "ok": "GOT 7 True",
        "long": "RAISED StreamError",
        "sigint": "RAISED KeyboardInterrupt",
        "empty": "RAISED RegionError",
    }[mode]
    assert expect in out, out


@pytest.mark.parametrize("mode", ["reveal", "hmac", "stream", "fd", "churn"])
def test_interpreter_exit_with_daemons_using_secrets(mode: str) -> None:
    """HELD: exit while daemon threads sit in reveal()/hmac()/from_stream()/from_fd() or
    create and close secrets: no crash, no traceback."""
    child = attack(
        """
        import hmac as _h, io
        faulthandler.cancel_dump_traceback_later()
        mode = PARAMS["mode"]
        s = Secret.from_bytes(bytearray(os.urandom(64)))
        started = threading.Event()
        def d_reveal():
            started.set()
            while True:
                with s.reveal() as v:
                    _h.digest(v, b"m" * 1000, "sha256"); bytes(v)
        def d_hmac():
            started.set()
            while True:
                s.hmac(b"m")
        class Slow:
            def readinto(self, b):
                started.set()
                while True:
                    b[:] = b"x" * len(b); time.sleep(0)
        def d_stream():
            Secret.from_stream(Slow(), max_size=None)
        def d_fd():
            r, w = os.pipe(); os.write(w, b"partial"); started.set(); Secret.from_fd(r)
        def d_churn():
            started.set()
            while True:
                x = Secret.from_bytes(b"k" * 100); x.hmac(b"m"); x.close()
        target = {"reveal": d_reveal, "hmac": d_hmac, "stream": d_stream, "fd": d_fd, "churn": d_churn}[mode]
        for _ in range(2):
            threading.Thread(target=target, daemon=True).start()
        started.wait(); time.sleep(0.02)
        """,
        params={"mode": mode},
        watchdog=30,
        timeout=40,
    )
    assert_survived(child, quiet=True)


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap"])
def test_dropped_inside_reveal_is_wiped_when_the_block_ends(backing: str) -> None:
    """HELD: a Secret dropped inside reveal() (same thread, and a thread that ended inside
    it) is zeroed (hook sees zeros) once the block ends."""
    child = attack(
        """
        seen = []
        hook = lambda a, n: seen.append(ctypes.string_at(a, 16))
        s = Secret(16, allocator=allocator.Secure(backing=PARAMS["backing"], on_before_unmap=hook))
        s.write(0, b"X" * 16)
        cm = s.reveal(); v = cm.__enter__()
        del s; gc.collect()
        assert seen == [], seen
        cm.__exit__(None, None, None); del v, cm; gc.collect()
        assert seen == [bytes(16)], seen
        seen.clear()
        s = Secret(16, allocator=allocator.Secure(backing=PARAMS["backing"], on_before_unmap=hook))
        s.write(0, b"Y" * 16)
        box = []
        def th():
            cm = s.reveal(); cm.__enter__(); box.append(cm)
        t = threading.Thread(target=th); t.start(); t.join()
        del s; box.clear()
        assert wait_until(lambda: (gc.collect(), seen)[1], 3), seen
        assert seen == [bytes(16)], seen
        """,
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)
