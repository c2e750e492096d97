# Only the C extensions are declared here; all metadata lives in pyproject.toml.
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# pkeyguard is Linux only: memory protection keys (pkey_alloc, pkey_mprotect, the PKRU
# register) and its fallback (mprotect with Linux's semantics, memfd_secret, madvise) are
# Linux system calls. The same text is the ImportError of src/pkeyguard/__init__.py.
NEEDS_LINUX = (
    "pkeyguard needs Linux (it uses Linux memory protection keys, or mprotect as Linux "
    "provides it); this system is {platform!r}"
)


class LinuxOnlyBuildExt(build_ext):
    """Stops a build elsewhere before any compiler runs (issue 20); an sdist, which compiles
    nothing, can still be made on any system."""

    def run(self) -> None:
        if sys.platform != "linux":
            raise SystemExit(NEEDS_LINUX.format(platform=sys.platform))
        super().run()


extra = ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fvisibility=hidden"]
if os.environ.get("PKEYGUARD_WERROR"):
    extra.append("-Werror")
sanitize = os.environ.get("PKEYGUARD_SANITIZE")  # e.g. "address,undefined"
link = []
if sanitize:
    extra += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    link += [f"-fsanitize={sanitize}"]
elif not os.environ.get("PKEYGUARD_DEBUG_INFO"):
    # No DWARF in what users install (issue 20): Python's own CFLAGS say -g, and the wheel's
    # _core .so was 434 KB, about 300 KB of it debug sections; -g0 comes after those flags, so
    # it wins (131 KB). The symbol table (.symtab, .strtab) stays, 17 KB: a crash's backtrace
    # in gdb or a perf profile then names the core's functions, most of them static and so in
    # no other table. PKEYGUARD_DEBUG_INFO=1 keeps -g for a debugging session.
    extra.append("-g0")
# The core's assert()s on its invariants (the pool's owned/held sets, counts >= 0, the guard
# stacks' links): Python's own flags say -DNDEBUG, so they are off in a normal build and on in
# the sanitizer build (tools/sanitize.sh) or with PKEYGUARD_ASSERT=1.
if sanitize or os.environ.get("PKEYGUARD_ASSERT"):
    extra.append("-UNDEBUG")


# _core's other translation units, one per job (_core.c is the module: setup, registration,
# the fork handler); their shared declarations are in _core.h, and only PyInit__core is
# exported.
extra_sources = {
    "_core": [
        f"src/pkeyguard/{unit}.c"
        for unit in (
            "_keys",
            "_keypool",
            "_mappings",
            "_bindings",
            "_guards",
            "_views",
            "_isolation",
            "_faults",
        )
    ]
}


def extension(name: str) -> Extension:
    # The extensions build with the same flags.
    return Extension(
        f"pkeyguard.{name}",
        sources=[f"src/pkeyguard/{name}.c", *extra_sources.get(name, [])],
        depends=[
            "src/pkeyguard/_arch.h",
            "src/pkeyguard/_arch_x86_64.h",
            "src/pkeyguard/_arch_none.h",
            "src/pkeyguard/_arch_pkru_layout.h",
            "src/pkeyguard/_core.h",
            "src/pkeyguard/_faults.h",
            "src/pkeyguard/_rights.h",
            "src/pkeyguard/_guardslots.c.h",
            "src/pkeyguard/_keypool.h",
        ],
        extra_compile_args=extra,
        extra_link_args=link,
    )


# _terminal: the controlling terminal with echo off, changed and restored in single C calls
# (Secret.from_prompt).
setup(
    ext_modules=[extension("_core"), extension("_terminal")],
    cmdclass={"build_ext": LinuxOnlyBuildExt},
)
