# Only the C extension is declared here; all metadata lives in pyproject.toml.
import os

from setuptools import Extension, setup

extra = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
if os.environ.get("PKEYGUARD_WERROR"):
    extra.append("-Werror")
sanitize = os.environ.get("PKEYGUARD_SANITIZE")  # e.g. "address,undefined"
link = []
if sanitize:
    extra += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    link += [f"-fsanitize={sanitize}"]

setup(
    ext_modules=[
        Extension(
            "pkeyguard._core",
            sources=["src/pkeyguard/_core.c"],
            depends=["src/pkeyguard/_pkru.h"],
            extra_compile_args=extra,
            extra_link_args=link,
        ),
        Extension(
            "pkeyguard._benchfloor",
            sources=["src/pkeyguard/_benchfloor.c"],
            depends=["src/pkeyguard/_pkru.h"],
            extra_compile_args=extra,
            extra_link_args=link,
        ),
    ]
)
