# Only the C extension is declared here; all metadata lives in pyproject.toml.
import os

from setuptools import Extension, setup  # type: ignore[import-untyped,unused-ignore]

extra = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
if os.environ.get("PKEYGUARD_WERROR"):
    extra.append("-Werror")

# The build folder starts with a dot: mypy and basedpyright, run over benchmarks/, skip it
# (in build/ they would find a second copy of the package).
setup(
    options={"build": {"build_base": ".build"}},
    ext_modules=[
        Extension(
            "pkeyguard_bench._floor",
            sources=["src/pkeyguard_bench/_floor.c"],
            extra_compile_args=extra,
        )
    ],
)
