"""The support report behind ``python -m pkeyguard info``."""

from __future__ import annotations

import dataclasses
import gzip
import os
import platform
import sys
from typing import Any

from . import _backend, _core
from ._errors import PkeyguardError

__all__ = ["count_free_keys", "support_report"]


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "unknown", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and model == "unknown":
                    model = value.strip()
                elif name == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _kernel_config() -> str | None:
    """The CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS line, if the kernel config is readable."""
    option = "CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS"
    candidates = [f"/boot/config-{platform.release()}", "/proc/config.gz"]
    for path in candidates:
        try:
            opener: Any = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if option in line:
                        return str(line.strip())
            return f"# {option} is not set ({path})"
        except OSError:
            continue
    return None


def count_free_keys() -> int:
    """Hardware keys pkey_alloc can still hand out (the core allocates them all, closed,
    then frees them)."""
    return _core.count_free_keys()


def support_report() -> dict[str, Any]:
    """Everything that decides the backend, as plain data."""
    model, flags = _cpuinfo()
    pku, ospke = _core.cpuid_flags()
    from . import __version__

    report: dict[str, Any] = {
        "version": __version__,
        "implementation": platform.python_implementation(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpuinfo_flags": {"pku": "pku" in flags, "ospke": "ospke" in flags},
        "cpuid": {"pku": pku, "ospke": ospke},
        "kernel_config": _kernel_config(),
        "env_backend": os.environ.get("PKEYGUARD_BACKEND"),
    }
    try:
        info = _backend.backend()
    except PkeyguardError as exc:
        report["backend"] = None
        report["error"] = str(exc)
        return report
    report["backend"] = info.name
    report["reason"] = info.reason
    report["forced"] = info.forced
    report["per_thread"] = info.per_thread
    report["hardware_keys"] = info.hardware_keys
    report["max_keys"] = info.max_keys
    report["guarantees"] = list(info.guarantees)
    report["secret_memory"] = info.secret_memory
    report["secret_memory_reason"] = info.secret_memory_reason
    report["keys_open"] = _core.live_key_count()
    report["key_stats"] = dataclasses.asdict(info.keys)
    if info.name == "pku":
        report["keys_free"] = count_free_keys()
        report["pkru"] = f"{_core.rdpkru():#010x}"
    else:
        report["keys_free"] = None
        report["pkru"] = None
    return report
