"""Other systems fail clearly (issue 20): building on a system other than Linux stops before any
compiler runs, and importing pkeyguard there raises ImportError before the C core is loaded,
both with the same "pkeyguard needs Linux (...)" message. The other system is simulated by
setting sys.platform in a child interpreter before the code under test runs.

arm64 Linux (issue 20) is supported on the mprotect backend, and `info` says plainly why there
is no pku backend there; these tests simulate the machine's name, and tools/wheels-arm64.sh
runs the whole suite on arm64 (under qemu-user), where the real name takes the same paths."""

from __future__ import annotations

import importlib.util
import io
import platform as host_platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pkeyguard import _backend, _core
from pkeyguard.__main__ import render_info
from pkeyguard._support import support_report

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "pkeyguard needs Linux ("

# Prints the import's error and whether any part of pkeyguard past the package got loaded.
IMPORT_AS = """
import sys
sys.platform = {platform!r}
try:
    import pkeyguard{submodule}
except ImportError as e:
    print("ImportError:", e)
else:
    print("imported")
print("loaded:", sorted(m for m in sys.modules if m.startswith("pkeyguard.")))
"""

# setup.py's build_ext, the command that compiles, with a compiler that records whether it was
# ever asked to run. setuptools and this interpreter's build configuration are loaded first,
# as the real system's would be (they are named after sys.platform).
BUILD_AS = """
import sys
import sysconfig
import setuptools
import setuptools.command.build_ext
sysconfig.get_config_vars()
from setuptools._distutils import ccompiler
def spawn(self, cmd, **kwargs):
    print("COMPILER RAN:", cmd)
    raise SystemExit(3)
ccompiler.CCompiler.spawn = spawn
sys.platform = {platform!r}
sys.argv = ["setup.py", "build_ext"]
exec(compile(open("setup.py").read(), "setup.py", "exec"))
"""


def import_as(platform: str, submodule: str = "") -> str:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_AS.format(platform=platform, submodule=submodule)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("platform", ["darwin", "win32", "freebsd14"])
@pytest.mark.parametrize("submodule", ["", "._core", ".pkey"])
def test_import_elsewhere_says_linux_before_the_core(platform: str, submodule: str) -> None:
    out = import_as(platform, submodule)
    assert f"ImportError: {PREFIX}" in out, out
    assert repr(platform) in out, out
    assert "loaded: []" in out, out  # neither _core nor any Python module of the package


def test_import_on_linux_works() -> None:
    out = import_as("linux")
    assert "imported" in out, out
    assert "pkeyguard._core" in out, out


@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None,
    reason="setup.py needs setuptools (a venv of Python 3.12+ has none)",
)
def test_build_elsewhere_stops_before_the_compiler(tmp_path: Path) -> None:
    # A copy of setup.py alone: if the check did not stop it, the build would go on to the
    # (stubbed) compiler or fail on the missing sources, and neither says "needs Linux".
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_AS.format(platform="darwin")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "COMPILER RAN" not in out, out
    assert PREFIX in out, out
    assert "'darwin'" in out, out
    # One message for both: what the build says is what the import says.
    build_line = next(line for line in out.splitlines() if PREFIX in line)
    import_line = next(
        line for line in import_as("darwin").splitlines() if line.startswith("ImportError")
    )
    assert build_line.strip() == import_line.removeprefix("ImportError:").strip()


def info_as(machine: str) -> str:
    """`pkeyguard info`'s text for this machine's report, with the machine's name replaced."""
    out = io.StringIO()
    render_info({**support_report(), "machine": machine}, out)
    return out.getvalue()


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_arm64_says_why_there_is_no_pku(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    def no_cpuid() -> tuple[bool, bool]:
        raise AssertionError("CPUID asked for on a machine that has none")

    monkeypatch.setattr(host_platform, "machine", lambda: machine)
    monkeypatch.setattr(_core, "cpuid_flags", no_cpuid)
    ok, reason = _backend.probe_pku()
    assert not ok
    assert reason.startswith("arm64 has no PKU; its protection keys (POE"), reason
    assert "not supported by pkeyguard yet" in reason, reason


def test_other_machines_say_what_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_platform, "machine", lambda: "riscv64")
    assert _backend.probe_pku() == (
        False,
        "not x86-64 (machine is riscv64); only x86 PKU is supported",
    )


def test_info_on_arm64_has_no_x86_lines() -> None:
    text = info_as("aarch64")
    # No CPUID on arm64, and an x86 kernel option means nothing there.
    assert "CPUID" not in text and "kernel config" not in text, text
    assert f"  protection keys: {_backend.no_pku_reason('aarch64')}\n" in text, text


def test_info_on_x86_64_shows_cpuid_and_the_kernel_option() -> None:
    text = info_as("x86_64")
    assert "  pku (CPUID):    " in text and "  ospke (CPUID):  " in text, text
    assert "kernel config:    " in text and "protection keys:" not in text, text


def test_info_here_names_this_machine() -> None:
    machine = host_platform.machine()
    text = info_as(machine)
    assert f"({machine})" in text.splitlines()[0], text
    if machine in _backend.X86_64_MACHINES:
        assert "pku (CPUID):" in text, text
    else:
        assert f"protection keys: {_backend.no_pku_reason(machine)}" in text, text
