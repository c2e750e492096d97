"""A region holds a ctypes type or a byte size: anything else is a type error.

At run time the same calls raise RegionTypeError (tests/unit/test_runtime_typestate.py).
"""

from pkeyguard import RegionGuard


def bad_regions() -> None:
    # E[mypy]: Value of type variable "_CT" of "RegionGuard" cannot be "str"
    # E[pyright]: Argument of type "type[str]" cannot be assigned to parameter "value_type"
    RegionGuard(str)
    # E[mypy]: Value of type variable "_CT" of "RegionGuard" cannot be "bytes"
    # E[pyright]: Argument of type "type[bytes]" cannot be assigned to parameter "value_type"
    RegionGuard(bytes)
    # E[mypy]: No overload variant of "RegionGuard" matches argument type "float"
    # E[pyright]: Argument of type "float" cannot be assigned to parameter "value_type"
    RegionGuard(3.5)
