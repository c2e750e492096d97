# ruff: noqa: E501 (the attacks are child programs in strings; their lines stay whole)
"""A child made by a raw clone() (no pthread_atfork handlers run).  docs/architecture.md:
the pid "stays as a second test for a child made by a raw clone() that runs no fork
handlers"; README: in a fork child "close() works there"; architecture: the DONTFORK hole
"where any later mmap could land and where the core would then re-protect, wipe or unmap
someone else's memory"."""

from tests.adversarial.support import assert_survived, attack

CLONE = """
import signal, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
s = Secret(16, allocator=allocator.Secure(backing="memfd_secret"))
s.write(0, b"P" * 16)
def raw_clone():
    faulthandler.cancel_dump_traceback_later()
    return libc.syscall(56, signal.SIGCHLD, 0, 0, 0, 0)   # clone(SIGCHLD): fork without handlers
"""


def test_raw_clone_child_close_unmaps_the_childs_own_memory() -> None:
    """DEFECT: in a raw-clone child the memfd_secret pages are a hole (MADV_DONTFORK, no
    atfork handler filled it).  The child's own mmap.mmap(-1, 4096) lands there; closing the
    inherited Secret then unmaps (wipes) the child's mmap: the next access is SIGSEGV."""
    child = attack(
        CLONE
        + """
pid = raw_clone()
if pid == 0:
    hit = None
    keep = []
    for i in range(64):
        m = mmap.mmap(-1, 4096); keep.append(m)
        start = None
        with open("/proc/self/maps") as f:
            before = f.read()
        c = ctypes.c_char.from_buffer(m); addr = ctypes.addressof(c); del c
        if addr == s.address:
            hit = m; break
    if hit is None:
        os._exit(7)          # nothing landed in the hole: inconclusive
    hit[:14] = b"CHILD-OWN-DATA"
    try:
        s.close()
    except PkeyguardError:
        pass
    ok = hit[:14] == b"CHILD-OWN-DATA"   # SIGSEGV here if close unmapped the child's page
    os._exit(0 if ok else 5)
_, st = os.waitpid(pid, 0)
assert st != 7 << 8, "inconclusive: no mapping landed in the hole"
assert not os.WIFSIGNALED(st), f"raw-clone child killed by signal {os.WTERMSIG(st)} after closing the inherited secret"
assert st == 0, f"child's own memory changed by the inherited secret's close (status {st})"
with s.reveal() as v:
    assert bytes(v) == b"P" * 16
""",
        watchdog=30,
    )
    assert_survived(child)


def test_raw_clone_child_close_works() -> None:
    """DEFECT: README "close() works there"; in a raw-clone child with nothing in the hole,
    close() raises MprotectError ENOMEM (mprotect of the hole), and an open inherited secret
    makes interpreter exit print 'Exception ignored ... releasing a secure region at exit'."""
    child = attack(
        CLONE
        + """
r, w = os.pipe()
pid = raw_clone()
if pid == 0:
    try:
        s.close(); res = "ok"
    except BaseException as e:
        res = f"{type(e).__name__}: {e}"
    os.write(w, res.encode()); os._exit(0)
os.close(w); os.waitpid(pid, 0)
res = os.read(r, 300).decode()
print("child close:", res)
assert res == "ok", res
""",
        watchdog=30,
    )
    assert_survived(child)
