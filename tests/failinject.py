"""Failure injection for the core's system calls (the shim in ``tests/native/failinject.c``).

Parent side: :func:`build` compiles the shim once per source version and returns its path;
:func:`preload_env` gives the environment that loads it into a child (``run_case(...,
failinject=True)`` in the adversarial suite does this).  Child side: :func:`arm`,
:func:`calls`, :func:`failed` and :func:`reset` drive it.  Only calls made from the core
(``_core*.so``) count and fail; the interpreter's own never do.

Names: mprotect, pkey_mprotect, pkey_alloc, pkey_free, memfd_secret, mmap, munmap, madvise,
mlock, munlock, ftruncate, fallocate, close, rt_sigprocmask (the core faults secret memory in
with it, one call per page).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["NAMES", "arm", "build", "calls", "failed", "preload_env", "reset"]

NAMES = (
    "mprotect",
    "pkey_mprotect",
    "pkey_alloc",
    "pkey_free",
    "memfd_secret",
    "mmap",
    "munmap",
    "madvise",
    "mlock",
    "munlock",
    "ftruncate",
    "fallocate",
    "close",
    "rt_sigprocmask",
)
_SOURCE = Path(__file__).resolve().parent / "native" / "failinject.c"
#: The core's architecture seam (system call numbers), included by the shim.
_CORE_SOURCES = Path(__file__).resolve().parent.parent / "src" / "pkeyguard"
_ENV = "PKEYGUARD_FAILINJECT_LIB"


def build() -> str:
    """Compile the shim (once per version of its source) and return the path of the .so."""
    sources = [_SOURCE, *sorted(_CORE_SOURCES.glob("_arch*.h"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"pkeyguard-failinject-{digest}.so"
    if out.exists():
        return str(out)
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "failure injection needs a C compiler"
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    subprocess.run(
        [
            cc,
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            f"-I{_CORE_SOURCES}",
            str(_SOURCE),
            "-o",
            str(tmp),
            "-ldl",
        ],
        check=True,
    )
    os.replace(tmp, out)  # atomic: concurrent builders each install a complete file
    return str(out)


def preload_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``LD_PRELOAD`` (appended, so a sanitizer runtime stays first) and the shim's path."""
    path = build()
    env = dict(base or {})
    preload = env.get("LD_PRELOAD", os.environ.get("LD_PRELOAD", ""))
    env["LD_PRELOAD"] = f"{preload}:{path}" if preload else path
    env[_ENV] = path
    return env


def _lib() -> ctypes.CDLL:
    path = os.environ.get(_ENV)
    assert path, "failure injection is not loaded: run the child with failinject=True"
    lib = ctypes.CDLL(path)
    lib.failinject_arm.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    lib.failinject_arm.restype = ctypes.c_int
    lib.failinject_calls.argtypes = [ctypes.c_char_p]
    lib.failinject_calls.restype = ctypes.c_long
    lib.failinject_failed.argtypes = [ctypes.c_char_p]
    lib.failinject_failed.restype = ctypes.c_long
    lib.failinject_reset.argtypes = []
    lib.failinject_reset.restype = None
    return lib


def arm(name: str, err: int, *, skip: int = 0, count: int = 1) -> None:
    """Let ``skip`` calls of ``name`` from the core through, then fail ``count`` (< 0: every
    later one) with ``err``, without making them.  Resets ``name``'s counters."""
    assert name in NAMES, name
    rc: int = _lib().failinject_arm(name.encode(), err, skip, count)
    assert rc == 0, name


def calls(name: str) -> int:
    """Calls of ``name`` from the core since it was last armed (or reset)."""
    return int(_lib().failinject_calls(name.encode()))


def failed(name: str) -> int:
    """Calls of ``name`` that the shim failed since it was last armed (or reset)."""
    return int(_lib().failinject_failed(name.encode()))


def reset() -> None:
    """Disarm every name and zero every counter."""
    _lib().failinject_reset()
