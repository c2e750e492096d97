"""PKU guest runner: run one command inside a throw-away QEMU guest whose CPU has PKU.

Machines without memory protection keys (most development and CI machines, most VMs) can still
run code that needs them: in a QEMU TCG guest with ``-cpu max``, which emulates PKU/OSPKE. This
package makes that one command::

    pkeyguard-vm --timeout 900 -- python -m pytest --color=no tests/hw
    python -m pkeyguard_vm --kernel backports -- python -m pkeyguard info

What happens:

1. Provisioning (cached in ``$PKEYGUARD_VM_CACHE`` or ``~/.cache/pkeyguard-vm``): qemu, a static
   busybox and cpio are installed with apt when missing and we are root; a Debian kernel
   package is downloaded and unpacked into the cache (nothing is installed into /boot); an
   initramfs (busybox, ``/init``, the 9p/virtio/overlay modules) is built. Which kernel
   (``--kernel``, ``kernel=``): ``release``, from this machine's apt sources (6.1 on Debian
   12), or ``backports``, the newest Debian builds for this release, from
   ``<codename>-backports`` through a private apt configuration in the cache (6.12 on Debian 12;
   the machine's apt setup is not touched and this needs no root). Each is pinned to an exact
   package and version (``PINNED_KERNELS``); ``--follow-kernel`` boots what
   ``linux-image-amd64`` resolves to today instead. Every run prints the kernel it boots.
2. QEMU boots that kernel with the host's ``/`` shared read-only over 9p. The guest puts a
   tmpfs overlay on top (writable, discarded at power-off), mounts proc/sys/dev, ``chroot``\\ s
   into it, ``cd``\\ s to the host's current directory, takes over the host's environment and runs
   the command. Output streams live over the serial console; the exit status comes back in a
   file on a second, writable 9p share and as a marker line on the console.
3. The guest refuses to run the command (exit 97) unless ``/proc/cpuinfo`` shows ``pku`` and
   ``ospke``, so CI cannot silently run the hardware suite without PKU. ``--no-pku`` boots
   ``-cpu max,-pku`` to exercise the fallback path and skips that check.

Exit status of the CLI: the command's own status; 124 on timeout; 97 when the guest has no
PKU; 125 when the VM itself failed (provisioning, boot, kernel panic); 130/143 when interrupted.

Notes for callers:

* ``argv[0]`` of ``python``/``python3``/``python3.N`` is replaced by ``sys.executable`` (the
  interpreter running this module), and a command that resolves to a pyenv shim is replaced by
  the same-named file beside ``sys.executable``: a shim costs about 3.5 s per call in the guest.
  ``sys.executable`` is used as is rather than through ``os.path.realpath`` so that a virtual
  environment stays active (its ``bin/python`` is a symlink; resolving it would leave the venv);
  it is never a shim itself because the shim ``exec``\\ s the real interpreter.
  Subprocesses that the command starts by name still go through ``PATH`` (and so the shim).
* The command's stdout is the guest's serial console, a tty: pass ``--color=no`` to pytest.
  Its stdin is /dev/null.
* ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` (set it in the environment of the runner: the guest
  inherits it) cuts pytest's start-up in the guest by more than half (one small test file: 30 s
  -> 9 s); it is not set by default because it also disables plugins a suite may need (enable
  those with ``-p NAME``).
* Only TCG works here (nested KVM hangs), so code runs roughly 10-50x slower than natively.
  Measured on a 2-core host: boot to the command about 3 s, ``true`` end to end 3-3.5 s,
  ``python -c 'print(1)'`` 4.5-6 s (Python's start-up is 1.4 s in the guest).
* The kernel is booted as the decompressed ELF through its PVH entry point: under TCG the
  bzImage's own decompression costs about 3 s per boot.
* The host's ``/`` is read-only in the guest and the overlay is discarded: files the command
  writes do not come back, except what it puts under ``$PKEYGUARD_VM_OUT``, which is copied to
  ``--out DIR`` (``out_dir=``) when the run ends, e.g. ``pytest --junitxml=$PKEYGUARD_VM_OUT/j.xml``
  (inside ``sh -c``, so that the guest expands the variable).
* To refresh a cached kernel, delete the cache directory (or its ``kernel*`` folder).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import gzip
import hashlib
import importlib.metadata
import json
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Final

__all__ = [
    "APT_PACKAGES",
    "DEFAULT_KERNEL",
    "EXIT_NO_CWD",
    "EXIT_NO_PKU",
    "EXIT_TIMEOUT",
    "EXIT_VM_ERROR",
    "GUEST_MODULES",
    "INIT_SCRIPT",
    "KERNELS",
    "PINNED_KERNELS",
    "Kernel",
    "NoPKUError",
    "ProvisionError",
    "Provisioned",
    "Tools",
    "VMError",
    "VMResult",
    "VMTimeoutError",
    "build_initramfs",
    "check_kernel_args",
    "command_script",
    "default_cache_dir",
    "ensure_kernel",
    "ensure_tools",
    "env_script",
    "extract_pvh_vmlinux",
    "is_static_elf",
    "kernel_cmdline",
    "main",
    "modinfo",
    "provision",
    "qemu_argv",
    "resolve_modules",
    "run",
    "substitute_python",
]

EXIT_NO_PKU: Final = 97
EXIT_TIMEOUT: Final = 124
EXIT_VM_ERROR: Final = 125
# Exit status of the guest script when the host's working directory does not exist there.
EXIT_NO_CWD: Final = 125

APT_PACKAGES: Final = ("qemu-system-x86", "busybox-static", "cpio")
KERNEL_META_PACKAGE: Final = "linux-image-amd64"
# Which Debian kernel the guest boots: "release" comes from this machine's apt sources (today's
# default; 6.1 on Debian 12), "backports" from <codename>-backports, the newest kernel Debian
# builds for this release (6.12 on Debian 12).
KERNELS: Final = ("release", "backports")
DEFAULT_KERNEL: Final = "release"
# The exact package each kernel is, with its Debian version: pinned, so that a test run means
# the same on every machine until a commit moves the pin.  Following linux-image-amd64 instead
# let the guest step change meaning unannounced: a fresh machine got 6.1.0-57 where the cached
# ones had 6.1.0-50, and a run that passed on one failed on the other (issue 18).
# ``follow_kernel=True`` (``--follow-kernel``) boots what linux-image-amd64 resolves to today:
# to try Debian's newest before moving a pin.  Every run prints the kernel it boots.
PINNED_KERNELS: Final[Mapping[str, tuple[str, str]]] = {
    "release": ("linux-image-6.1.0-57-amd64", "6.1.192-3"),
    "backports": ("linux-image-6.12.95+deb12-amd64", "6.12.95-1~bpo12+1"),
}
DEBIAN_ARCHIVE: Final = "http://deb.debian.org/debian"
DEBIAN_KEYRING: Final = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Loaded in dependency order; anything built into the kernel is skipped.
GUEST_MODULES: Final = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Bump when the initramfs layout changes so cached images are rebuilt.
_INITRAMFS_FORMAT: Final = 1
_SHARED_TAG: Final = "pkgvm_out"
_ROOT_TAG: Final = "hostroot"
# Variables that describe the host shell's state rather than the command's environment.
_DROPPED_ENV: Final = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAIL_BYTES: Final = 64 * 1024

Log = Callable[[str], None]


class VMError(RuntimeError):
    """The guest could not be provisioned, booted or did not report the command's status."""


class ProvisionError(VMError):
    """A tool, package or the guest kernel is missing and could not be installed."""


class NoPKUError(VMError):
    """The guest CPU does not show ``pku`` and ``ospke``: the command was not run."""


class VMTimeoutError(VMError):
    """The command did not finish in time; qemu was killed."""

    def __init__(
        self, message: str, *, output: str = "", timings: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(message)  # args == (message,): pickles with the default __reduce__
        self.output = output
        self.timings = dict(timings or {})


@dataclasses.dataclass(frozen=True)
class Tools:
    qemu: Path
    busybox: Path
    bios: Path | None  # qboot.rom when installed, else qemu's default (SeaBIOS): no faster here


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    image: Path  # what qemu -kernel boots: the uncompressed vmlinux (PVH) or the bzImage
    modules: tuple[Path, ...]  # uncompressed .ko files in load order
    package: str = ""  # the Debian package it came from, and that package's version
    deb_version: str = ""
    followed: bool = False  # what linux-image-amd64 resolved to, not the pin

    def describe(self) -> str:
        """``6.1.0-57-amd64 (linux-image-6.1.0-57-amd64 6.1.192-3, pinned)``: for the log."""
        how = "followed linux-image-amd64" if self.followed else "pinned"
        return f"{self.version} ({self.package} {self.deb_version or '?'}, {how})"


@dataclasses.dataclass(frozen=True)
class Provisioned:
    tools: Tools
    kernel: Kernel
    initramfs: Path
    seconds: float


@dataclasses.dataclass(frozen=True)
class VMResult:
    returncode: int
    output: str  # what the command wrote to stdout and stderr, interleaved
    timings: dict[str, float]  # provision, boot, command, shutdown, total (seconds)
    console: str  # the guest's console before the command started (kernel/init messages)


# --------------------------------------------------------------------------- provisioning


def _stderr_log(message: str) -> None:
    print(f"pkeyguard-vm: {message}", file=sys.stderr, flush=True)


def _quiet_log(message: str) -> None:
    del message


def _is_root() -> bool:
    return os.geteuid() == 0


def default_cache_dir() -> Path:
    override = os.environ.get("PKEYGUARD_VM_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pkeyguard-vm"


def _elf_header(data: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx of an ELF64 LE."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx


def is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP segment (the initramfs has no libc)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    header = _elf_header(head)
    if header is None:
        return False
    phoff, _, phentsize, phnum, *_ = header
    for i in range(phnum):
        offset = phoff + i * phentsize
        if offset + 4 > len(head):
            return False
        if struct.unpack_from("<I", head, offset)[0] == 3:  # PT_INTERP
            return False
    return True


def _find_tools() -> tuple[Tools | None, list[str]]:
    """The tools, or None and what is missing. cpio only matters for installing (inspection)."""
    qemu = shutil.which("qemu-system-x86_64")
    busybox = shutil.which("busybox")
    missing = []
    if qemu is None:
        missing.append("qemu-system-x86_64 (package qemu-system-x86)")
    if busybox is None:
        missing.append("busybox (package busybox-static)")
    elif not is_static_elf(Path(busybox)):
        missing.append(
            f"a static busybox ({busybox} is dynamically linked; package busybox-static)"
        )
    if qemu is None or busybox is None or missing:
        return None, missing
    bios = Path("/usr/share/qemu/qboot.rom")
    return Tools(Path(qemu), Path(busybox), bios if bios.is_file() else None), []


def _run_logged(args: Sequence[str], log: Log, *, cwd: Path | None = None) -> None:
    """Run a provisioning command; on failure raise ProvisionError with its output's tail."""
    log("$ " + shlex.join(args))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ProvisionError(f"{args[0]} not found: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace")[-3000:]
        raise ProvisionError(f"{shlex.join(args)} failed with status {proc.returncode}:\n{tail}")


def _apt(args: Sequence[str], log: Log, *, cwd: Path | None = None) -> None:
    """Run an apt command, refreshing the package lists once if it fails (fresh machines)."""
    try:
        _run_logged(args, log, cwd=cwd)
    except ProvisionError as first:
        if not _is_root():
            raise
        log(f"{args[0]} failed; running apt-get update and retrying")
        try:
            _run_logged(["apt-get", "update"], log)
        except ProvisionError as exc:
            raise ProvisionError(f"{first}\n\nand apt-get update failed too:\n{exc}") from exc
        _run_logged(args, log, cwd=cwd)


def _install_hint() -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)


def ensure_tools(*, allow_install: bool = True, log: Log = _stderr_log) -> Tools:
    tools, missing = _find_tools()
    if tools is not None and (
        shutil.which("cpio") is not None or not _is_root() or not allow_install
    ):
        return tools
    if shutil.which("cpio") is None:
        missing.append("cpio (package cpio)")
    what = "; ".join(missing)
    if not allow_install:
        raise ProvisionError(f"missing: {what}. Install them with: {_install_hint()}")
    if not _is_root():
        raise ProvisionError(
            f"missing: {what}. Installing needs root; run as root: {_install_hint()}"
        )
    log(f"installing {' '.join(APT_PACKAGES)} (missing: {what})")
    _apt(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], log)
    tools, missing = _find_tools()
    if tools is None:
        raise ProvisionError(f"still missing after apt-get install: {'; '.join(missing)}")
    return tools


def _module_name(filename: str) -> str:
    name = filename
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _read_module(path: Path) -> bytes:
    """The module's ELF bytes; busybox insmod wants them uncompressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ProvisionError(
                f"{path.name} is zstd-compressed; install zstd (apt-get install zstd)"
            )
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value pairs of a kernel module's .modinfo section."""
    header = _elf_header(elf)
    if header is None:
        raise ValueError("not an ELF64 little-endian file")
    _, shoff, _, _, shentsize, shnum, shstrndx = header

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, base)
        return name, offset, size

    _, strtab_off, strtab_size = section(shstrndx)
    strtab = elf[strtab_off : strtab_off + strtab_size]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, offset, size = section(i)
        if strtab[name_off : strtab.index(b"\0", name_off)] != b".modinfo":
            continue
        for item in elf[offset : offset + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def resolve_modules(modules_root: Path, names: Sequence[str]) -> list[Path]:
    """Module files for ``names`` and their dependencies, dependencies first.

    Reads ``depends=`` from each module's .modinfo instead of calling ``modprobe
    --show-depends``: the Debian package ships no modules.dep (depmod makes it at install time)
    and kmod may not be installed.
    """
    index: dict[str, Path] = {}
    for path in sorted(modules_root.rglob("*.ko*")):
        index.setdefault(_module_name(path.name), path)
    builtin: set[str] = set()
    builtin_list = modules_root / "modules.builtin"
    if builtin_list.is_file():
        for line in builtin_list.read_text().split():
            builtin.add(_module_name(os.path.basename(line)))
    order: list[Path] = []
    seen: set[str] = set()

    def visit(raw: str, wanted_by: str | None) -> None:
        name = _module_name(raw)
        if not name or name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        path = index.get(name)
        if path is None:
            by = f" (needed by {wanted_by})" if wanted_by else ""
            raise ProvisionError(f"kernel module {name}{by} not found under {modules_root}")
        for deps in modinfo(_read_module(path)).get("depends", []):
            for dep in deps.split(","):
                visit(dep, name)
        order.append(path)

    for wanted in names:
        visit(wanted, None)
    return order


def _has_pvh_note(elf: bytes) -> bool:
    """Whether a vmlinux has XEN_ELFNOTE_PHYS32_ENTRY, which qemu needs to boot it directly."""
    header = _elf_header(elf)
    if header is None:
        return False
    phoff, _, phentsize, phnum, *_ = header
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz]
            if name == b"Xen\0" and note_type == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_pvh_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed kernel inside a bzImage, if qemu can boot it through PVH.

    Under TCG the kernel's own decompressor takes about 3 s of every boot; decompressing once
    here and booting the ELF through its PVH entry point skips that. None when the payload
    format is unknown (zstd needs the ``zstd`` program) or the kernel lacks PVH (then the bzImage
    is booted as is).
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(wbits=31).decompress(payload)
        elif payload.startswith(b"\x5d\x00\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):  # zstd (Debian's 6.12 kernels)
            unpacked = _unzstd(payload)
            if unpacked is None:
                return None
            elf = unpacked
        else:
            return None
    except (lzma.LZMAError, zlib.error):
        return None
    return elf if _has_pvh_note(elf) else None


def _unzstd(payload: bytes) -> bytes | None:
    """A zstd bzImage payload, decompressed with the zstd program; None without one.

    The kernel's build appends the uncompressed size (4 bytes, little endian) after the zstd
    frame, which zstd would reject as a second frame: it is checked and cut off.
    """
    zstd = shutil.which("zstd")
    if zstd is None or len(payload) < 8:
        return None
    size = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    proc = subprocess.run([zstd, "-dcq"], input=payload[:-4], capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) != size:
        return None
    return proc.stdout


def _debian_codename(os_release: Path = Path("/etc/os-release")) -> str:
    """This machine's Debian release codename (``bookworm``), from os-release(5)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in os_release.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                fields[name.strip()] = value.strip().strip("\"'")
    codename = fields.get("VERSION_CODENAME", "")
    if fields.get("ID") != "debian" or not re.fullmatch(r"[a-z]+", codename):
        raise ProvisionError(
            "--kernel backports needs a Debian host (it downloads from <codename>-backports); "
            f"/etc/os-release says ID={fields.get('ID', '?')} VERSION_CODENAME={codename or '?'}"
        )
    return codename


def _backports_apt(cache: Path) -> list[str]:
    """apt options for a private configuration that sees only <codename>-backports.

    Everything lives in ``cache/apt-backports``: the machine's sources, lists and preferences are
    neither read nor changed, and no root is needed.
    """
    codename = _debian_codename()
    if not DEBIAN_KEYRING.is_file():
        raise ProvisionError(
            f"{DEBIAN_KEYRING} is missing (package debian-archive-keyring); "
            "it verifies the backports archive"
        )
    base = cache / "apt-backports"
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    sources.write_text(
        f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_ARCHIVE} {codename}-backports main\n"
    )
    options = {
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": base / "sources.list.d",
        "Dir::Etc::Preferences": base / "preferences",
        "Dir::Etc::PreferencesParts": base / "preferences.d",
        "Dir::State::Lists": base / "lists",
        "Dir::Cache": base,
        "Dir::Cache::Archives": base / "archives",
        "Acquire::Languages": "none",
    }
    return [arg for name, value in options.items() for arg in ("-o", f"{name}={value}")]


def _kernel_package(log: Log, apt_options: Sequence[str] = ()) -> str:
    """The versioned package that linux-image-amd64 currently depends on.

    With ``apt_options`` (a private configuration), its package lists are refreshed first;
    without, the machine's lists are used and refreshed only if they lack the package (as root).
    """

    def show() -> str:
        proc = subprocess.run(
            ["apt-cache", *apt_options, "show", "--no-all-versions", KERNEL_META_PACKAGE],
            capture_output=True,
            check=False,
        )
        return proc.stdout.decode(errors="replace") if proc.returncode == 0 else ""

    if apt_options:
        _run_logged(["apt-get", *apt_options, "update"], log)
        text = show()
    else:
        text = show()
        if "Depends:" not in text and _is_root():
            _run_logged(["apt-get", "update"], log)
            text = show()
    match = re.search(r"^Depends:.*?\b(linux-image-\d[\w.+-]*)", text, re.MULTILINE)
    if match is None:
        raise ProvisionError(
            f"apt-cache show {KERNEL_META_PACKAGE} gave no kernel package; "
            "run apt-get update (as root) and retry"
        )
    return match.group(1)


def _package_version(package: str, apt_options: Sequence[str] = ()) -> str:
    """The version apt would take of ``package`` (its candidate), or ""."""
    proc = subprocess.run(
        ["apt-cache", *apt_options, "show", "--no-all-versions", package],
        capture_output=True,
        check=False,
    )
    text = proc.stdout.decode(errors="replace") if proc.returncode == 0 else ""
    match = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else ""


def _kernel_dir(cache: Path, kernel: str) -> Path:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return cache / ("kernel" if kernel == DEFAULT_KERNEL else f"kernel-{kernel}")


def _cached_kernel(kdir: Path) -> Kernel | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads((kdir / "kernel.json").read_text())
        cached = Kernel(
            str(data["version"]),
            kdir / str(data["image"]),
            tuple(kdir / str(m) for m in data["modules"]),
            str(data.get("package", "")),
            str(data.get("deb_version", "")),
        )
        if cached.image.is_file() and all(m.is_file() for m in cached.modules):
            return cached
    return None


def _download_kernel(
    spec: str, apt_options: Sequence[str], log: Log, *, cwd: Path, pinned: bool
) -> None:
    """``apt-get download spec`` (``package=version``), refreshing the lists once if needed."""
    try:
        if apt_options:
            try:
                _run_logged(["apt-get", *apt_options, "download", spec], log, cwd=cwd)
            except ProvisionError:
                _run_logged(["apt-get", *apt_options, "update"], log)
                _run_logged(["apt-get", *apt_options, "download", spec], log, cwd=cwd)
        else:
            _apt(["apt-get", "download", spec], log, cwd=cwd)
    except ProvisionError as exc:
        if not pinned:
            raise
        raise ProvisionError(
            f"cannot download the pinned guest kernel {spec} (Debian may have dropped it from "
            "its archive, or this is not the Debian release it was pinned for). Move the pin "
            "(PINNED_KERNELS in pkeyguard_vm, and its README) to a kernel apt offers, or boot "
            f"what linux-image-amd64 resolves to today with --follow-kernel.\n{exc}"
        ) from exc


def ensure_kernel(
    cache: Path,
    *,
    kernel: str = DEFAULT_KERNEL,
    log: Log = _stderr_log,
    follow_kernel: bool = False,
) -> Kernel:
    """The guest kernel and its modules, downloaded and unpacked into ``cache`` once.

    ``kernel`` is one of :data:`KERNELS` (see there); each has its own folder in the cache.
    The package is the pin of :data:`PINNED_KERNELS`, or with ``follow_kernel`` what
    linux-image-amd64 resolves to now (asked of apt on every call).  A cached kernel is used
    only if it is that package at that version; otherwise it is replaced.
    """
    kdir = _kernel_dir(cache, kernel)
    apt_options: list[str] | None = None
    if follow_kernel:
        apt_options = _backports_apt(cache) if kernel == "backports" else []
        package = _kernel_package(log, apt_options)
        deb_version = _package_version(package, apt_options)
        if not deb_version:
            raise ProvisionError(f"apt-cache show {package} gave no version")
    else:
        package, deb_version = PINNED_KERNELS[kernel]
    cached = _cached_kernel(kdir)
    if cached is not None and (cached.package, cached.deb_version) == (package, deb_version):
        return dataclasses.replace(cached, followed=follow_kernel)
    if apt_options is None:
        apt_options = _backports_apt(cache) if kernel == "backports" else []
    version = package.removeprefix("linux-image-")
    spec = f"{package}={deb_version}"
    log(f"downloading guest kernel {spec} into {cache}")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".kernel-") as tmp_name:
        tmp = Path(tmp_name)
        download = tmp / "deb"
        download.mkdir()
        _download_kernel(spec, apt_options, log, cwd=download, pinned=not follow_kernel)
        debs = sorted(download.glob("*.deb"))
        if len(debs) != 1:
            raise ProvisionError(f"apt-get download {spec} left {len(debs)} .deb files")
        unpacked = tmp / "root"
        _run_logged(["dpkg", "-x", str(debs[0]), str(unpacked)], log)
        vmlinuz = unpacked / "boot" / f"vmlinuz-{version}"
        roots = [unpacked / p / "modules" / version for p in ("lib", "usr/lib")]
        modules_root = next((r for r in roots if r.is_dir()), None)
        if not vmlinuz.is_file() or modules_root is None:
            raise ProvisionError(f"{debs[0].name} has no {vmlinuz.name} or modules for {version}")
        ordered = resolve_modules(modules_root, GUEST_MODULES)
        staged = tmp / "kernel"
        (staged / "modules").mkdir(parents=True)
        bzimage = vmlinuz.read_bytes()
        vmlinux = extract_pvh_vmlinux(bzimage)
        if vmlinux is not None:
            image = "vmlinux"
            (staged / image).write_bytes(vmlinux)
        else:
            image = "vmlinuz"
            (staged / image).write_bytes(bzimage)
            log(
                f"cannot unpack {vmlinuz.name} for a direct (PVH) boot: booting the bzImage, "
                "about 3 s slower per boot (for a zstd kernel, install zstd and delete "
                f"{kdir} to retry)"
            )
        names = []
        for path in ordered:
            name = f"modules/{_module_name(path.name)}.ko"
            (staged / name).write_bytes(_read_module(path))
            names.append(name)
        record = {
            "version": version,
            "package": package,
            "deb_version": deb_version,
            "image": image,
            "modules": names,
        }
        (staged / "kernel.json").write_text(json.dumps(record, indent=1) + "\n")
        if kdir.exists():
            shutil.rmtree(kdir)
        os.replace(staged, kdir)
    loaded = " ".join(_module_name(p.name) for p in ordered)
    log(f"guest kernel {version} ({image}); modules: {loaded}")
    return Kernel(
        version,
        kdir / image,
        tuple(kdir / n for n in names),
        package,
        deb_version,
        follow_kernel,
    )


# --------------------------------------------------------------------------- initramfs

# /init of the guest. busybox ash. The kernel passes pkgvm_* words of the command line to init
# as environment variables; words with a dot would be taken as module parameters, so none of
# them holds a path: the host's paths come from /shared/config.
INIT_SCRIPT: Final = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /host /ovl /shared
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

halt_vm() {
    # poweroff needs ACPI; the reboot fallback ends qemu too because of -no-reboot, and if
    # init itself exits the kernel panics, which with panic=-1 also ends qemu.
    sync
    poweroff -f
    sleep 1
    reboot -f
    exit 1
}

fail() {  # fail CODE MESSAGE: tell the host, then power off without running the command
    echo "pkeyguard-vm: $2"
    echo "$1" > /shared/failed 2>/dev/null
    printf '\n@@PKGVM-FAIL:%s:%s@@\n' "$pkgvm_nonce" "$1"
    halt_vm
}

mount -t proc proc /proc || fail setup "cannot mount /proc"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The serial tty would turn \n into \r\n; the host should get the command's bytes unchanged.
stty -onlcr 2>/dev/null

while read -r mod; do
    insmod "/lib/modules/$mod" || fail setup "insmod $mod failed"
done < /modules.list

o9p=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$o9p" pkgvm_out /shared || fail setup "cannot mount the results share"
# cache=loose: the host root does not change under us during a run and it is ~15% faster.
mount -t 9p -o "$o9p,ro,cache=loose" hostroot /host || fail setup "cannot mount the host's /"
mount -t tmpfs -o mode=0755 tmpfs /ovl
mkdir /ovl/upper /ovl/work /ovl/root
mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work overlay /ovl/root \
    || fail setup "cannot mount the overlay"
r=/ovl/root
mount -t proc proc $r/proc || fail setup "cannot mount proc in the chroot"
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev || fail setup "cannot mount /dev in the chroot"
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
# /tmp stays part of the overlay: the host's working directory may live under it.

. /shared/config || fail setup "cannot read /shared/config"
mkdir -p "$r$pkgvm_dir" && mount --bind /shared "$r$pkgvm_dir" \
    || fail setup "cannot bind the results share to $pkgvm_dir"

if [ "$pkgvm_pku" = 1 ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    for flag in pku ospke; do
        case " $flags " in
            *" $flag "*) ;;
            *) fail nopku "no '$flag' in the guest's cpuinfo flags: no PKU, command not run" ;;
        esac
    done
fi

printf '@@PKGVM-START:%s@@\n' "$pkgvm_nonce"
env -i /bin/busybox chroot $r /bin/sh "$pkgvm_dir/run.sh" </dev/null
rc=$?
echo "$rc" > /shared/status
sync
printf '@@PKGVM-EXIT:%s:%s@@\n' "$pkgvm_nonce" "$rc"
halt_vm
"""


class _Cpio:
    """Writer for the cpio "newc" format the kernel unpacks (no cpio binary or root needed)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._ino = 0

    def _entry(
        self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(body), 0, 0, *rdev, len(encoded), 0)
        self.data += b"070701" + "".join(f"{v:08x}" for v in fields).encode()
        self.data += encoded
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, body: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, body)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = -1  # the trailer has inode 0
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def build_initramfs(dest: Path, *, busybox: Path, modules: Sequence[Path]) -> Path:
    """Write a gzip-compressed newc initramfs: busybox, /init and ``modules`` in load order."""
    cpio = _Cpio()
    for directory in (".", "bin", "dev", "lib", "lib/modules"):
        cpio.directory(directory)
    # Without /dev/console the kernel starts init with no stdin/stdout at all.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    names = []
    for module in modules:
        names.append(module.name)
        cpio.file(f"lib/modules/{module.name}", module.read_bytes())
    cpio.file("modules.list", "".join(f"{n}\n" for n in names).encode())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    os.replace(tmp, dest)
    return dest


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise provisioning between concurrent runs sharing one cache."""
    with open(cache / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def provision(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_install: bool = True,
    log: Log = _stderr_log,
    kernel: str = DEFAULT_KERNEL,
    follow_kernel: bool = False,
) -> Provisioned:
    """Make sure qemu, the guest kernel and the initramfs exist; cheap when cached.

    ``kernel`` is one of :data:`KERNELS`: which Debian kernel the guest boots; the pinned
    package (:data:`PINNED_KERNELS`), or with ``follow_kernel`` what apt resolves today.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    start = time.monotonic()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create the cache directory {cache}: {exc}") from exc
    with _locked(cache):
        tools = ensure_tools(allow_install=allow_install, log=log)
        image = ensure_kernel(cache, kernel=kernel, log=log, follow_kernel=follow_kernel)
        bb = tools.busybox.stat()
        key = hashlib.sha256(
            json.dumps(
                [
                    _INITRAMFS_FORMAT,
                    INIT_SCRIPT,
                    str(tools.busybox),
                    bb.st_size,
                    bb.st_mtime_ns,
                    image.version,
                    [m.name for m in image.modules],
                ]
            ).encode()
        ).hexdigest()[:16]
        initramfs = cache / f"initramfs-{kernel}-{key}.cpio.gz"
        if not initramfs.is_file():
            log(f"building {initramfs}")
            build_initramfs(initramfs, busybox=tools.busybox, modules=image.modules)
            # This kernel's older images only. The image of the layout before --kernel
            # (initramfs-<key>.cpio.gz) is left alone: a runner of that version may share the
            # cache and boot it right now, and deleting it would make the two rebuild in turn.
            for stale in cache.glob(f"initramfs-{kernel}-*.cpio.gz"):
                if stale != initramfs:
                    stale.unlink(missing_ok=True)
    return Provisioned(tools, image, initramfs, time.monotonic() - start)


# --------------------------------------------------------------------------- the command


def _is_pyenv_shim(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    return head.startswith(b"#!") and b"pyenv" in head and b"exec" in head


def substitute_python(argv: Sequence[str], path: str | None = None) -> list[str]:
    """Replace a ``python``/pyenv-shim ``argv[0]`` by the interpreter running us (see module doc).

    ``path`` is the PATH used to resolve ``argv[0]`` (default: this process's).
    """
    args = list(argv)
    if not args:
        return args
    first = args[0]
    major, minor = sys.version_info[:2]
    if first in {"python", "python3", f"python{major}", f"python{major}.{minor}"}:
        args[0] = sys.executable
        return args
    resolved = first if "/" in first else shutil.which(first, path=path)
    if resolved is not None and _is_pyenv_shim(resolved):
        sibling = os.path.join(os.path.dirname(sys.executable), os.path.basename(first))
        if os.path.isfile(sibling) and os.access(sibling, os.X_OK):
            args[0] = sibling
    return args


def _quote(value: str) -> str:
    # surrogateescape'd bytes (undecodable environment values) pass through unchanged
    return shlex.quote(value)


def env_script(env: Mapping[str, str]) -> bytes:
    """``export NAME='value'`` lines for ``env``; sourced by /bin/sh in the guest."""
    lines = ["# environment of the host process, written by pkeyguard-vm"]
    for name, value in sorted(env.items()):
        if name in _DROPPED_ENV or not _ENV_NAME.match(name):
            continue
        lines.append(f"export {name}={_quote(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def command_script(argv: Sequence[str], *, cwd: str, env_file: str, out_dir: str) -> bytes:
    """The script the guest runs in the chroot: environment, working directory, command."""
    if not argv:
        raise ValueError("empty command")
    msg = _quote(f"pkeyguard-vm: cannot cd to {cwd} in the guest")
    text = (
        "# written by pkeyguard-vm\n"
        f". {_quote(env_file)}\n"
        "export PKEYGUARD_VM_GUEST=1\n"
        f"export PKEYGUARD_VM_OUT={_quote(out_dir)}\n"
        f"cd {_quote(cwd)} || {{ echo {msg} >&2; exit {EXIT_NO_CWD}; }}\n"
        f"exec {' '.join(_quote(a) for a in argv)}\n"
    )
    return text.encode("utf-8", "surrogateescape")


def check_kernel_args(words: Sequence[str]) -> list[str]:
    """Extra kernel command-line words (``secretmem.enable=1``): one word each, and none that
    would override what the runner itself sets."""
    out = []
    for word in words:
        if not word or word != word.strip() or any(c.isspace() for c in word):
            raise ValueError(f"a kernel argument is one word without spaces, got {word!r}")
        if word.partition("=")[0] in _OWN_KERNEL_ARGS or word.startswith("pkgvm_"):
            raise ValueError(f"{word!r} would override pkeyguard-vm's own kernel argument")
        out.append(word)
    return out


_OWN_KERNEL_ARGS = frozenset({"console", "panic", "tsc", "quiet", "loglevel", "init", "rdinit"})


def kernel_cmdline(
    *, nonce: str, pku: bool, verbose: bool = False, extra: Sequence[str] = ()
) -> str:
    # tsc=reliable: TCG's TSCs look unsynchronised, and the hpet fallback makes every clock read
    # in the guest an emulated MMIO access (and boot ~0.5 s slower).
    words = ["console=ttyS0", "panic=-1", "tsc=reliable"]
    # quiet also silences the kernel decompressor; loglevel=1 keeps printk off the console
    # except KERN_EMERG, so "Kernel panic - not syncing: ..." still reaches the console tail
    # (oopses raise the level themselves).
    words += ["loglevel=4"] if verbose else ["quiet", "loglevel=1"]
    words += [f"pkgvm_nonce={nonce}", f"pkgvm_pku={int(pku)}"]
    return " ".join(words + check_kernel_args(extra))


def qemu_argv(
    prov: Provisioned,
    *,
    shared_dir: str,
    nonce: str,
    pku: bool = True,
    smp: int = 2,
    mem: str = "2G",
    verbose: bool = False,
    cpu: str | None = None,
    kernel_args: Sequence[str] = (),
) -> list[str]:
    """The qemu command line. TCG only: nested KVM hangs on these machines.

    ``cpu`` overrides the CPU model (default ``max``, or ``max,-pku`` when ``pku`` is false);
    the guest's PKU check still follows ``pku``.  ``kernel_args`` go at the end of the
    kernel command line.
    """
    if cpu is None:
        cpu = "max" if pku else "max,-pku"
    shared_opt = shared_dir.replace(",", ",,")  # qemu's escape for a comma in an option value
    argv = [
        str(prov.tools.qemu),
        "-accel", "tcg,thread=multi",
        "-cpu", cpu,
        "-smp", str(smp),
        "-m", mem,
        "-nodefaults",
        "-display", "none",
        "-serial", "stdio",
        "-no-reboot",
    ]  # fmt: skip
    if prov.tools.bios is not None:
        argv += ["-bios", str(prov.tools.bios)]
    argv += [
        "-kernel", str(prov.kernel.image),
        "-initrd", str(prov.initramfs),
        "-append", kernel_cmdline(nonce=nonce, pku=pku, verbose=verbose, extra=kernel_args),
        "-virtfs",
        f"local,path=/,mount_tag={_ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={shared_opt},mount_tag={_SHARED_TAG},security_model=none",
    ]  # fmt: skip
    return argv


class _Console:
    """Splits the guest's console into boot noise, the command's output and the markers."""

    def __init__(self, nonce: str, sink: BinaryIO | None, boot_sink: BinaryIO | None) -> None:
        self._start = f"@@PKGVM-START:{nonce}@@\n".encode()
        self._exit = f"@@PKGVM-EXIT:{nonce}:".encode()
        self._fail = re.compile(rb"@@PKGVM-FAIL:" + nonce.encode() + rb":(\w+)@@")
        self._exit_rest = re.compile(rb"(\d+)@@")
        self._sink = sink
        self._boot_sink = boot_sink
        self.boot = bytearray()
        self.output = bytearray()
        self.tail = bytearray()
        self._pending = bytearray()
        self.started_at: float | None = None
        self.exit_status: int | None = None
        self.failure: str | None = None

    @property
    def done(self) -> bool:
        return self.exit_status is not None or self.failure is not None

    def feed(self, data: bytes) -> None:
        self.tail += data
        del self.tail[:-_TAIL_BYTES]
        if self.done:
            return
        if self.started_at is None:
            if self._boot_sink is not None:
                self._boot_sink.write(data)
                self._boot_sink.flush()
            self.boot += data
            failed = self._fail.search(self.boot)
            if failed is not None:
                self.failure = failed.group(1).decode()
                return
            idx = self.boot.find(self._start)
            if idx < 0:
                return
            self.started_at = time.monotonic()
            data = bytes(self.boot[idx + len(self._start) :])
            del self.boot[idx:]
        self._pending += data
        idx = self._pending.find(self._exit)
        if idx >= 0:
            self._emit(self._pending[:idx])
            del self._pending[:idx]
            match = self._exit_rest.match(self._pending, len(self._exit))
            if match is not None:
                self.exit_status = int(match.group(1))
            return
        # Hold back only a possible beginning of the marker; everything else goes out live.
        keep = 0
        for k in range(min(len(self._exit) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(self._exit[:k]):
                keep = k
                break
        self._emit(self._pending[: len(self._pending) - keep])
        del self._pending[: len(self._pending) - keep]

    def _emit(self, data: bytes | bytearray) -> None:
        if not data:
            return
        self.output += data
        if self._sink is not None:
            try:
                self._sink.write(data)
                self._sink.flush()
            except BrokenPipeError:
                # A reader such as `| head` went away: keep running, stop streaming.
                self._sink = None

    def tail_text(self, lines: int = 40) -> str:
        """The console's last lines; from a little before the panic message if there is one."""
        all_lines = self.tail.decode(errors="replace").replace("\r\n", "\n").splitlines()
        first = max(0, len(all_lines) - lines)
        for i in range(len(all_lines) - 1, -1, -1):
            if "Kernel panic - not syncing" in all_lines[i]:
                first = min(first, max(0, i - 10))
                break
        return "\n".join(all_lines[first:])


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn that makes qemu get SIGKILL when we die, even by SIGKILL.

    Without it a runner killed hard would leave qemu (in its own session) running until the
    guest command ends by itself, which for a hung test is never.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _boot(
    argv: Sequence[str],
    *,
    nonce: str,
    shared: Path,
    timeout: float,
    stream: BinaryIO | None,
    verbose: bool,
    timings: dict[str, float],
) -> VMResult:
    console = _Console(nonce, stream, sys.stderr.buffer if verbose else None)
    qemu_err = bytearray()
    start = time.monotonic()
    deadline = start + timeout
    # Own session and process group: a terminal's ^C reaches only us, and we kill the group.
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,  # qemu must not read (or put into raw mode) our terminal
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map() and not console.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_group(proc)
                    now = time.monotonic()
                    timings["boot"] = (console.started_at or now) - start
                    timings["total"] = timings["provision"] + now - start
                    raise VMTimeoutError(
                        f"timed out after {timeout:g} s; qemu killed. Console tail:\n"
                        + console.tail_text(),
                        output=console.output.decode(errors="replace"),
                        timings=timings,
                    )
                for key, _ in sel.select(remaining):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                    elif key.fileobj is proc.stdout:
                        console.feed(data)
                    else:
                        qemu_err += data
                        if verbose:
                            sys.stderr.buffer.write(data)
                            sys.stderr.flush()
        finished = time.monotonic()
        # The status is already on the host; give qemu a moment to power off, then kill it.
        try:
            proc.wait(timeout=3 if console.done else 10)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
    finally:
        _kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
    end = time.monotonic()
    started = console.started_at
    timings["boot"] = (started if started is not None else finished) - start
    if started is not None:
        timings["command"] = finished - started
    timings["shutdown"] = end - finished
    timings["total"] = timings["provision"] + end - start

    status = console.exit_status
    if status is None and console.failure is None:
        # The marker can only be missing if the console lost it; the file is authoritative.
        with contextlib.suppress(OSError, ValueError):
            status = int((shared / "status").read_text().strip())
    if status is not None:
        return VMResult(
            status,
            console.output.decode(errors="replace"),
            timings,
            console.boot.decode(errors="replace"),
        )
    details = console.tail_text()
    if qemu_err.strip():
        details += "\nqemu stderr:\n" + qemu_err.decode(errors="replace").strip()[-3000:]
    if console.failure == "nopku":
        raise NoPKUError(
            "the guest has no usable PKU (/proc/cpuinfo lacks pku or ospke); "
            "the command was not run. Console tail:\n" + details
        )
    if console.failure is not None:
        raise VMError(f"guest setup failed ({console.failure}). Console tail:\n{details}")
    if b"Kernel panic" in console.tail:
        why = "the guest kernel panicked"
    elif not console.tail.strip():
        why = "qemu did not start the guest; see its stderr"
    else:
        why = "boot failure?"
    raise VMError(
        f"qemu exited with status {proc.returncode} without reporting the command's exit status "
        f"({why}). Console tail:\n{details}"
    )


def _remove_stale_shares() -> None:
    """Delete results shares left by runners that were killed (SIGKILL skips our cleanup)."""
    for path in Path(tempfile.gettempdir()).glob("pkeyguard-vm-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    pku: bool = True,
    smp: int = 2,
    mem: str = "2G",
    stream: BinaryIO | None = None,
    verbose: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_install: bool = True,
    cpu: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    kernel: str = DEFAULT_KERNEL,
    kernel_args: Sequence[str] = (),
    follow_kernel: bool = False,
) -> VMResult:
    """Run ``argv`` in a fresh PKU guest and return its exit status and output.

    ``timeout`` bounds the VM (boot and command), not provisioning. ``cwd`` and ``env`` default
    to this process's; ``stream`` receives the command's output live (e.g.
    ``sys.stdout.buffer``). Raises :class:`VMTimeoutError`, :class:`NoPKUError` (``pku=True``
    but the guest has none), :class:`ProvisionError` or :class:`VMError`. ``cpu`` overrides
    qemu's CPU model (see :func:`qemu_argv`). What the command writes under
    ``$PKEYGUARD_VM_OUT`` is copied to ``out_dir`` at the end, also after a failure. ``kernel``
    picks the guest kernel, one of :data:`KERNELS` (pinned; ``follow_kernel``: what apt
    resolves today); ``kernel_args`` are extra words for its command line
    (``secretmem.enable=1``).  The kernel booted is always printed on stderr.
    """
    if not argv:
        raise ValueError("empty command")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    kernel_args = check_kernel_args(kernel_args)
    start = time.monotonic()
    log = _stderr_log if verbose else _quiet_log
    # Slow provisioning steps (apt, kernel download) are always announced.
    prov = provision(
        cache_dir=cache_dir,
        allow_install=allow_install,
        log=_stderr_log,
        kernel=kernel,
        follow_kernel=follow_kernel,
    )
    # Always, so that every test log says which kernel it tested.
    _stderr_log(f"guest kernel {prov.kernel.describe()}")
    timings = {"provision": time.monotonic() - start}
    environ = dict(os.environ if env is None else env)
    work_dir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    command = substitute_python(argv, environ.get("PATH"))
    _remove_stale_shares()
    shared = Path(tempfile.mkdtemp(prefix=f"pkeyguard-vm-{os.getpid()}-"))
    try:
        nonce = secrets.token_hex(8)
        guest_out = shared / "out"
        guest_out.mkdir()
        (shared / "config").write_text(f"pkgvm_dir={_quote(str(shared))}\n")
        (shared / "env.sh").write_bytes(env_script(environ))
        (shared / "run.sh").write_bytes(
            command_script(
                command, cwd=work_dir, env_file=str(shared / "env.sh"), out_dir=str(guest_out)
            )
        )
        qemu = qemu_argv(
            prov,
            shared_dir=str(shared),
            nonce=nonce,
            pku=pku,
            smp=smp,
            mem=mem,
            verbose=verbose,
            cpu=cpu,
            kernel_args=kernel_args,
        )
        log("$ " + shlex.join(qemu))
        log(f"command in the guest: {shlex.join(command)}")
        return _boot(
            qemu,
            nonce=nonce,
            shared=shared,
            timeout=timeout,
            stream=stream,
            verbose=verbose,
            timings=timings,
        )
    finally:
        try:
            if out_dir is not None and (shared / "out").is_dir():
                shutil.copytree(shared / "out", out_dir, dirs_exist_ok=True, symlinks=True)
        finally:
            shutil.rmtree(shared, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


class _Terminated(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so that ``finally`` blocks kill qemu."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise _Terminated(signum)


def _version() -> str:
    try:
        return importlib.metadata.version("pkeyguard-vm")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def _prog() -> str:
    """How we were started: ``pkeyguard-vm`` (console script) or ``python -m pkeyguard_vm``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("", "-c", "__main__.py", "__init__.py"):
        return "python -m pkeyguard_vm"
    return name


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a command in a throw-away QEMU guest whose CPU has PKU "
        "(memory protection keys). Exits with the command's status; 124 on timeout, "
        f"{EXIT_NO_PKU} if the guest has no PKU, {EXIT_VM_ERROR} if the VM failed.",
        epilog=f"example: {prog} --timeout 900 -- "
        "python -m pytest -p no:cacheprovider --color=no tests/hw",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="kill the VM after this long (default 900; provisioning excluded)",
    )
    parser.add_argument(
        "--no-pku",
        action="store_true",
        help="boot -cpu max,-pku and skip the PKU check (tests the fallback)",
    )
    parser.add_argument(
        "--kernel",
        choices=KERNELS,
        default=DEFAULT_KERNEL,
        help="the Debian kernel the guest boots: 'release' (default), linux-image-amd64 from this "
        "machine's apt sources (Debian 12: 6.1); 'backports', the newest Debian builds for this "
        "release, from <codename>-backports (Debian 12: 6.12)",
    )
    parser.add_argument(
        "--follow-kernel",
        action="store_true",
        help="boot what linux-image-amd64 resolves to today instead of the pinned package "
        "(to try Debian's newest kernel before moving the pin)",
    )
    parser.add_argument(
        "--kernel-arg",
        action="append",
        default=[],
        metavar="WORD",
        help="add WORD to the guest kernel's command line (repeatable), e.g. "
        "secretmem.enable=1 (memfd_secret on Linux 5.14 to 6.4)",
    )
    parser.add_argument("--smp", type=int, default=2, metavar="N", help="guest CPUs (default 2)")
    parser.add_argument("--mem", default="2G", metavar="SIZE", help="guest memory (default 2G)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="copy what the command writes under $PKEYGUARD_VM_OUT in the guest to DIR",
    )
    parser.add_argument(
        "--provision-only",
        action="store_true",
        help="install/download/build what is needed, print it, and exit",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never call apt-get install; fail if something is missing",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show provisioning steps, the qemu command line and the boot log",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND ARGS...: what to run in the guest")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not args.provision_only and not command:
        parser.error("no command given (put it after --)")
    if args.smp < 1:
        parser.error("--smp must be at least 1")
    try:
        check_kernel_args(args.kernel_arg)
    except ValueError as exc:
        parser.error(str(exc))
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if args.provision_only:
            prov = provision(
                allow_install=not args.no_install,
                log=_stderr_log,
                kernel=args.kernel,
                follow_kernel=args.follow_kernel,
            )
            print(f"kernel     {prov.kernel.describe()} {prov.kernel.image}")
            print(f"initramfs  {prov.initramfs}")
            print(f"qemu       {prov.tools.qemu} (bios: {prov.tools.bios or 'default'})")
            print(f"provision  {prov.seconds:.2f} s")
            return 0
        result = run(
            command,
            timeout=args.timeout,
            pku=not args.no_pku,
            smp=args.smp,
            mem=args.mem,
            stream=sys.stdout.buffer,
            verbose=args.verbose,
            allow_install=not args.no_install,
            out_dir=args.out,
            kernel=args.kernel,
            kernel_args=args.kernel_arg,
            follow_kernel=args.follow_kernel,
        )
        if args.verbose:
            _stderr_log(
                "timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
            )
        return result.returncode
    except VMTimeoutError as exc:
        sys.stdout.flush()
        _stderr_log(str(exc))
        return EXIT_TIMEOUT
    except NoPKUError as exc:
        _stderr_log(f"error: {exc}")
        return EXIT_NO_PKU
    except VMError as exc:
        _stderr_log(f"error: {exc}")
        return EXIT_VM_ERROR
    except KeyboardInterrupt:
        _stderr_log("interrupted; qemu killed")
        return 130
    except _Terminated as exc:
        _stderr_log(f"terminated by signal {exc.signum}; qemu killed")
        return 128 + exc.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
