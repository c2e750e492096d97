# Only the C extension is declared here; all metadata lives in pyproject.toml.
import os

from setuptools import Extension, setup  # type: ignore[import-untyped,unused-ignore]

extra = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
if os.environ.get("PKEYGUARD_WERROR"):
    extra.append("-Werror")

setup(
    ext_modules=[
        Extension(
            "pkeyguard_bench._floor",
            sources=["src/pkeyguard_bench/_floor.c"],
            extra_compile_args=extra,
        )
    ]
)
