"""The PKU guest runner (pkeyguard_vm): the pieces on the host, then real boots under TCG.

The boots are real (about 5 s each on a 2-core machine; marked ``boot``): they provision qemu
and the Debian kernels on first use (root and apt needed for qemu) and are not skipped anywhere.
``-m "not boot"`` runs the host-side tests alone (they still provision, which is cheap when
cached).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pkeyguard_vm as vm

# Inside the guest (someone ran these tests there) the cache is read-only and qemu would nest.
pytestmark = pytest.mark.skipif(
    os.environ.get("PKEYGUARD_VM_GUEST") == "1", reason="no VM inside the PKU guest"
)

# Compiled on the host, run in the guest: the guest sees the host's / (read-only).
PKEY_ALLOC_C = Path(__file__).resolve().parent / "pkey_alloc.c"
#: A runner that starts a child the way pkeyguard_vm starts qemu, then waits (killed by a test).
HARD_KILLED_RUNNER = Path(__file__).resolve().parent / "hard_killed_runner.py"

# Where pkeyguard_vm was imported from (the installed package or a source tree), for children.
assert vm.__file__ is not None
_SRC = os.path.dirname(os.path.dirname(vm.__file__))

WEIRD = "two  spaces, 'single' \"double\"\nsecond line $HOME `x` \\ end\n"


@pytest.fixture(scope="module")
def prov() -> vm.Provisioned:
    return vm.provision()


@pytest.fixture(scope="module")
def prov_backports() -> vm.Provisioned:
    return vm.provision(kernel="backports")


def _child_env() -> dict[str, str]:
    """This environment, with pkeyguard_vm importable by a child Python from where we got it."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=_SRC + (os.pathsep + path if path else ""))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkeyguard_vm", *args],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=False,
    )


def _release(version: str) -> tuple[int, int]:
    """(6, 12) of "6.12.43+bpo-amd64"."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _ppid_and_comm(pid: str) -> tuple[int, str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return -1, ""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2 :].split()[1]), comm


def _qemu_children(parent: int | None = None) -> list[int]:
    """qemu processes whose parent is ``parent`` (default: us), zombies included."""
    parent = os.getpid() if parent is None else parent
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        ppid, comm = _ppid_and_comm(pid)
        if ppid == parent and comm.startswith("qemu-system"):
            found.append(int(pid))
    return found


# --------------------------------------------------------------------------- host side


def test_initramfs_contents(prov: vm.Provisioned, tmp_path: Path) -> None:
    dest = vm.build_initramfs(
        tmp_path / "initramfs.cpio.gz", busybox=prov.tools.busybox, modules=prov.kernel.modules
    )
    archive = subprocess.run(["gzip", "-dc", str(dest)], capture_output=True, check=True).stdout

    def cpio(*args: str) -> str:
        return subprocess.run(
            ["cpio", "--quiet", *args], input=archive, capture_output=True, check=True
        ).stdout.decode()

    names = cpio("-t").split()
    modules = [f"lib/modules/{m.name}" for m in prov.kernel.modules]
    assert set(names) >= {".", "init", "bin/busybox", "dev/console", "modules.list", *modules}
    listing = {line.split()[-1]: line for line in cpio("-tv").splitlines()}
    assert listing["dev/console"].startswith("c")
    assert listing["init"].startswith("-rwx")
    assert cpio("-i", "--to-stdout", "init") == vm.INIT_SCRIPT
    assert cpio("-i", "--to-stdout", "modules.list").split() == [
        m.name for m in prov.kernel.modules
    ]
    assert vm.is_static_elf(prov.tools.busybox)


def test_modules_in_dependency_order(prov: vm.Provisioned) -> None:
    order = [m.name.removesuffix(".ko") for m in prov.kernel.modules]
    for wanted in ("9pnet_virtio", "9p", "overlay"):
        assert wanted in order
    for index, module in enumerate(prov.kernel.modules):
        deps = vm.modinfo(module.read_bytes()).get("depends", [""])[0]
        for dep in filter(None, deps.split(",")):
            assert dep.replace("-", "_") in order[:index], f"{module.name} needs {dep} first"


@pytest.mark.parametrize("kernel", vm.KERNELS)
def test_each_kernel_is_its_pinned_package(kernel: str) -> None:
    # Issue 18: following linux-image-amd64 let a fresh machine boot 6.1.0-57 where cached
    # ones booted 6.1.0-50, unannounced.  The pin decides, and the cache records it.
    got = vm.provision(kernel=kernel).kernel
    assert (got.package, got.deb_version) == vm.PINNED_KERNELS[kernel]
    assert got.version == got.package.removeprefix("linux-image-")
    assert got.describe() == f"{got.version} ({got.package} {got.deb_version}, pinned)"


def _fake_kernel_dir(kdir: Path, package: str, deb_version: str) -> None:
    (kdir / "modules").mkdir(parents=True)
    (kdir / "vmlinux").write_bytes(b"\x7fELF")
    (kdir / "modules" / "9p.ko").write_bytes(b"")
    record = {
        "version": package.removeprefix("linux-image-"),
        "package": package,
        "deb_version": deb_version,
        "image": "vmlinux",
        "modules": ["modules/9p.ko"],
    }
    (kdir / "kernel.json").write_text(json.dumps(record))


def test_a_cached_kernel_other_than_the_pin_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package, deb_version = vm.PINNED_KERNELS["release"]
    _fake_kernel_dir(tmp_path / "kernel", "linux-image-6.1.0-1-amd64", "6.1.4-1")
    asked: list[str] = []

    def download(spec: str, *args: object, **kwargs: object) -> None:
        asked.append(spec)
        raise vm.ProvisionError("no network in this test")

    monkeypatch.setattr(vm, "_download_kernel", download)
    with pytest.raises(vm.ProvisionError, match="no network"):
        vm.ensure_kernel(tmp_path, kernel="release", log=lambda _: None)
    assert asked == [f"{package}={deb_version}"]
    # The pinned one, cached, is used as it is.
    (tmp_path / "kernel").rename(tmp_path / "other")
    _fake_kernel_dir(tmp_path / "kernel", package, deb_version)
    got = vm.ensure_kernel(tmp_path, kernel="release", log=lambda _: None)
    assert (got.package, got.deb_version, got.followed) == (package, deb_version, False)
    assert asked == [f"{package}={deb_version}"]


def test_a_pin_that_cannot_be_downloaded_says_how_to_move_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: object, log: object, **kwargs: object) -> None:
        raise vm.ProvisionError("E: Can't find a source to download version '1' of 'x'")

    monkeypatch.setattr(vm, "_apt", fail)
    with pytest.raises(vm.ProvisionError, match=r"pinned guest kernel x=1 .*--follow-kernel"):
        vm._download_kernel("x=1", [], lambda _: None, cwd=tmp_path, pinned=True)  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(vm.ProvisionError, match=r"^E: Can't find") as info:
        vm._download_kernel("x=1", [], lambda _: None, cwd=tmp_path, pinned=False)  # pyright: ignore[reportPrivateUsage]
    assert "--follow-kernel" not in str(info.value)


@pytest.mark.parametrize("kernel", vm.KERNELS)
def test_kernel_image_boots_without_decompression(kernel: str) -> None:
    # The decompressed PVH vmlinux saves ~3 s of every TCG boot (6.1: xz, 6.12: zstd payload).
    image = vm.provision(kernel=kernel).kernel.image
    assert image.name == "vmlinux"
    with open(image, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def _fake_prov(bios: Path | None) -> vm.Provisioned:
    return vm.Provisioned(
        vm.Tools(Path("/usr/bin/qemu-system-x86_64"), Path("/bin/busybox"), bios),
        vm.Kernel("6.1.0-1-amd64", Path("/c/kernel/vmlinux"), (Path("/c/kernel/modules/9p.ko"),)),
        Path("/c/initramfs-x.cpio.gz"),
        0.0,
    )


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_qemu_argv() -> None:
    argv = vm.qemu_argv(
        _fake_prov(Path("/usr/share/qemu/qboot.rom")), shared_dir="/tmp/s,x", nonce="abc"
    )
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _option(argv, "-accel") == ["tcg,thread=multi"]
    assert _option(argv, "-cpu") == ["max"]
    assert _option(argv, "-smp") == ["2"]
    assert _option(argv, "-m") == ["2G"]
    assert {"-nodefaults", "-no-reboot"} <= set(argv)
    assert _option(argv, "-serial") == ["stdio"]
    assert _option(argv, "-display") == ["none"]
    assert _option(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert _option(argv, "-kernel") == ["/c/kernel/vmlinux"]
    assert _option(argv, "-initrd") == ["/c/initramfs-x.cpio.gz"]
    root, shared = _option(argv, "-virtfs")
    assert root == (
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    )
    assert shared == "local,path=/tmp/s,,x,mount_tag=pkgvm_out,security_model=none"
    (append,) = _option(argv, "-append")
    words = append.split()
    assert {"console=ttyS0", "quiet", "panic=-1", "pkgvm_nonce=abc", "pkgvm_pku=1"} <= set(words)
    # A dot before "=" would make the kernel treat the word as a module parameter.
    assert not [w for w in words if "." in w.partition("=")[0]]

    no_pku = vm.qemu_argv(_fake_prov(None), shared_dir="/s", nonce="n", pku=False, smp=3, mem="1G")
    assert _option(no_pku, "-cpu") == ["max,-pku"]
    assert "-bios" not in no_pku
    assert _option(no_pku, "-smp") == ["3"]
    assert _option(no_pku, "-m") == ["1G"]
    assert "pkgvm_pku=0" in _option(no_pku, "-append")[0].split()


def test_extra_kernel_arguments() -> None:
    argv = vm.qemu_argv(
        _fake_prov(None), shared_dir="/s", nonce="n", kernel_args=["secretmem.enable=1", "x"]
    )
    assert _option(argv, "-append")[0].split()[-2:] == ["secretmem.enable=1", "x"]
    for bad in ("two words", "", " lead", "console=tty0", "panic=1", "pkgvm_pku=0", "a\tb"):
        with pytest.raises(ValueError):
            vm.qemu_argv(_fake_prov(None), shared_dir="/s", nonce="n", kernel_args=[bad])
    with pytest.raises(SystemExit):
        vm.main(["--kernel-arg", "console=tty0", "--", "true"])


def _source(tmp_path: Path, env: dict[str, str], cwd: Path) -> tuple[int, dict[str, str], str]:
    """Run the guest's scripts with the host's /bin/sh (dash, the same shell the guest uses)."""
    env_file = tmp_path / "env.sh"
    env_file.write_bytes(vm.env_script(env))
    run_sh = tmp_path / "run.sh"
    run_sh.write_bytes(
        vm.command_script(
            ["env", "-0"], cwd=str(cwd), env_file=str(env_file), out_dir=str(tmp_path)
        )
    )
    proc = subprocess.run(
        ["env", "-i", "/bin/sh", str(run_sh)], capture_output=True, cwd="/", check=False
    )
    seen = {}
    for item in proc.stdout.split(b"\0"):
        if item:
            name, _, value = item.partition(b"=")
            seen[os.fsdecode(name)] = os.fsdecode(value)
    return proc.returncode, seen, proc.stderr.decode()


def test_env_file_round_trip(tmp_path: Path) -> None:
    env = {
        "SPACES": "a b  c ",
        "QUOTES": "it's \"quoted\" '' \\'",
        "NEWLINES": "line 1\nline 2\n\n",
        "SHELLISH": "$HOME ${X:-y} `id` $(id) ; | & * ? [a]",
        "EMPTY": "",
        "UNICODE": "Grüße ✓",
        "UNDECODABLE": os.fsdecode(b"\xff\xfe raw"),
        "PATH": "/usr/bin:/bin",
        "PWD": "/not/the/cwd",
        "SHLVL": "7",
        "BAD-NAME": "dropped",
    }
    rc, seen, err = _source(tmp_path, env, tmp_path)
    assert rc == 0, err
    for name in ("SPACES", "QUOTES", "NEWLINES", "SHELLISH", "EMPTY", "UNICODE", "UNDECODABLE"):
        assert seen[name] == env[name], name
    assert seen["PWD"] == str(tmp_path)  # the shell's own, not the host shell's stale one
    assert seen.get("SHLVL") != "7"
    assert "BAD-NAME" not in seen
    assert seen["PKEYGUARD_VM_GUEST"] == "1"
    assert seen["PKEYGUARD_VM_OUT"] == str(tmp_path)


def test_missing_cwd_is_reported(tmp_path: Path) -> None:
    rc, _, err = _source(tmp_path, {}, tmp_path / "gone")
    assert rc == vm.EXIT_NO_CWD
    assert "cannot cd to" in err


def test_python_is_replaced_by_the_running_interpreter() -> None:
    major, minor = sys.version_info[:2]
    for name in ("python", "python3", f"python{major}.{minor}"):
        assert vm.substitute_python([name, "-c", "pass"]) == [sys.executable, "-c", "pass"]
    assert vm.substitute_python(["sh", "-c", "python"]) == ["sh", "-c", "python"]
    assert vm.substitute_python(["/usr/bin/python3"]) == ["/usr/bin/python3"]


def test_pyenv_shim_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shims = tmp_path / "shims"
    real_bin = tmp_path / "versions" / "bin"
    shims.mkdir()
    real_bin.mkdir(parents=True)
    shim_text = textwrap.dedent("""\
        #!/usr/bin/env bash
        set -e
        export PYENV_ROOT="/root/.pyenv"
        exec "/root/.pyenv/libexec/pyenv" exec "$program" "$@"
        """)
    for name in ("mytool", "othertool"):
        (shims / name).write_text(shim_text)
        (shims / name).chmod(0o755)
    (real_bin / "mytool").write_text("#!/bin/sh\n")
    (real_bin / "mytool").chmod(0o755)
    (real_bin / "python3").write_text("")
    monkeypatch.setattr(sys, "executable", str(real_bin / "python3"))
    path = f"{shims}:/usr/bin:/bin"
    assert vm.substitute_python(["mytool", "-x"], path) == [str(real_bin / "mytool"), "-x"]
    assert vm.substitute_python([str(shims / "mytool")], path) == [str(real_bin / "mytool")]
    # No real program beside the interpreter: left alone rather than guessed.
    assert vm.substitute_python(["othertool"], path) == ["othertool"]
    assert vm.substitute_python(["python3"], path) == [str(real_bin / "python3")]


def test_child_dies_with_a_hard_killed_runner() -> None:
    # What keeps qemu from outliving a runner killed with SIGKILL (no finally runs then).
    runner = subprocess.Popen(
        [sys.executable, str(HARD_KILLED_RUNNER), _SRC], stdout=subprocess.PIPE
    )
    assert runner.stdout is not None
    child = int(runner.stdout.readline())
    runner.kill()
    runner.wait()
    state = _state(child)
    for _ in range(100):
        state = _state(child)
        if state in ("", "Z"):
            break
        time.sleep(0.05)
    assert state in ("", "Z"), f"child still running (state {state})"


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[0]


def test_missing_qemu_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(vm, "_is_root", lambda: False)
    with pytest.raises(vm.ProvisionError) as info:
        vm.provision(cache_dir=tmp_path / "cache", log=lambda _: None)
    message = str(info.value)
    assert "qemu-system-x86_64" in message
    assert "needs root" in message
    assert "apt-get install -y --no-install-recommends qemu-system-x86 busybox-static" in message

    monkeypatch.setattr(vm, "_is_root", lambda: True)
    with pytest.raises(vm.ProvisionError, match=r"qemu-system-x86_64.*Install them with"):
        vm.provision(cache_dir=tmp_path / "cache", allow_install=False, log=lambda _: None)


def test_cli_help_version_and_bad_options() -> None:
    helped = _cli("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: python -m pkeyguard_vm ")
    for option in (
        "--timeout",
        "--no-pku",
        "--kernel",
        "--follow-kernel",
        "--smp",
        "--mem",
        "--out",
        "--verbose",
    ):
        assert option in helped.stdout
    version = _cli("--version")
    assert version.returncode == 0
    assert version.stdout.split()[:3] == ["python", "-m", "pkeyguard_vm"]
    bad_kernel = _cli("--kernel", "4.19", "--", "true")
    assert bad_kernel.returncode == 2
    assert "invalid choice: '4.19'" in bad_kernel.stderr
    no_command = _cli("--timeout", "5")
    assert no_command.returncode == 2
    assert "no command given" in no_command.stderr


def test_runner_does_not_need_pkeyguard() -> None:
    # A separate distribution with no dependencies: importing it pulls in no pkeyguard code.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, pkeyguard_vm; print(*sys.modules)"],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=True,
    )
    loaded = proc.stdout.split()
    assert "pkeyguard_vm" in loaded
    assert not [m for m in loaded if m == "pkeyguard" or m.startswith("pkeyguard.")]


def test_unknown_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kernel must be one of release, backports"):
        vm.provision(cache_dir=tmp_path, kernel="newest")
    with pytest.raises(ValueError, match="kernel must be one of"):
        vm.run(["true"], timeout=5, cache_dir=tmp_path, kernel="6.1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "codename"),
    [
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n',
         "bookworm"),
        ("ID=debian\nVERSION_CODENAME='trixie'\n", "trixie"),
        ('ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n', None),
        ("ID=debian\n", None),  # sid names no codename
        ("", None),
    ],
    ids=["bookworm", "quoted", "ubuntu", "sid", "empty"],
)  # fmt: skip
def test_debian_codename(tmp_path: Path, text: str, codename: str | None) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text(text)
    if codename is not None:
        assert vm._debian_codename(os_release) == codename
    else:
        with pytest.raises(vm.ProvisionError, match="needs a Debian host"):
            vm._debian_codename(os_release)


def test_backports_apt_configuration_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setattr(vm, "_debian_codename", lambda: "bookworm")
    monkeypatch.setattr(vm, "DEBIAN_KEYRING", keyring)
    argv = vm._backports_apt(tmp_path)
    assert argv[::2] == ["-o"] * (len(argv) // 2)
    options = dict(item.split("=", 1) for item in argv[1::2])
    base = tmp_path / "apt-backports"
    assert Path(options["Dir::Etc::SourceList"]).read_text() == (
        f"deb [signed-by={keyring}] http://deb.debian.org/debian bookworm-backports main\n"
    )
    # Nothing of the machine's apt configuration or state is read or written.
    for name in (
        "Dir::Etc::SourceParts",
        "Dir::Etc::Preferences",
        "Dir::Etc::PreferencesParts",
        "Dir::State::Lists",
        "Dir::Cache",
        "Dir::Cache::Archives",
    ):
        assert Path(options[name]).is_relative_to(base), name
    assert Path(options["Dir::Etc::SourceParts"]).is_dir()
    assert not list(Path(options["Dir::Etc::SourceParts"]).iterdir())

    monkeypatch.setattr(vm, "DEBIAN_KEYRING", tmp_path / "missing.gpg")
    with pytest.raises(vm.ProvisionError, match="debian-archive-keyring"):
        vm._backports_apt(tmp_path)


def test_kernels_are_cached_apart(prov: vm.Provisioned, prov_backports: vm.Provisioned) -> None:
    cache = vm.default_cache_dir()
    assert prov.kernel.image.parent == cache / "kernel"
    assert prov_backports.kernel.image.parent == cache / "kernel-backports"
    assert prov.initramfs.name.startswith("initramfs-release-")
    assert prov_backports.initramfs.name.startswith("initramfs-backports-")
    assert prov.initramfs.is_file() and prov_backports.initramfs.is_file()
    # backports is the newer kernel (Debian 12: 6.12 against 6.1), booted the same way.
    assert _release(prov_backports.kernel.version) > _release(prov.kernel.version)
    assert prov_backports.kernel.image.name == "vmlinux"  # zstd-compressed: unpacked with zstd
    names = [m.name.removesuffix(".ko") for m in prov_backports.kernel.modules]
    assert {"9pnet_virtio", "9p", "overlay"} <= set(names)


def test_console_splits_output_from_markers() -> None:
    nonce = "0123abcd"
    stream = (
        b"\r\nkernel noise\r\n@@PKGVM-START:" + nonce.encode() + b"@@\n"
        b"out @@ not a marker\nno newline at end"
        b"@@PKGVM-EXIT:" + nonce.encode() + b":42@@\n[ 1.0] reboot: Power down\r\n"
    )
    for size in (1, 3, 7, len(stream)):
        console = vm._Console(nonce, None, None)
        for i in range(0, len(stream), size):
            console.feed(stream[i : i + size])
        assert console.exit_status == 42
        assert bytes(console.output) == b"out @@ not a marker\nno newline at end"
        assert b"kernel noise" in console.boot

    spoofed = vm._Console(nonce, None, None)
    spoofed.feed(b"@@PKGVM-START:" + nonce.encode() + b"@@\n@@PKGVM-EXIT:other:0@@\n")
    assert spoofed.exit_status is None

    failed = vm._Console(nonce, None, None)
    failed.feed(b"pkeyguard-vm: no pku\n@@PKGVM-FAIL:" + nonce.encode() + b":nopku@@\n")
    assert failed.failure == "nopku"


def test_console_tail_keeps_the_panic_message() -> None:
    console = vm._Console("n", None, None)
    trace = b"".join(b"[ 1.0] frame %d\r\n" % i for i in range(100))
    console.feed(b"early\r\n[ 1.0] Kernel panic - not syncing: boom\r\n" + trace)
    tail = console.tail_text()
    assert "Kernel panic - not syncing: boom" in tail
    assert "frame 99" in tail
    assert "\r" not in tail


# --------------------------------------------------------------------------- real boots


@pytest.fixture(scope="module")
def pkey_alloc_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PKEY_ALLOC_C, built on the host (the guest runs the host's files)."""
    directory = tmp_path_factory.mktemp("pkey_alloc")
    subprocess.run(
        ["gcc", "-O2", "-o", str(directory / "pkey_alloc"), str(PKEY_ALLOC_C)], check=True
    )
    return directory / "pkey_alloc"


@pytest.mark.boot
@pytest.mark.parametrize("kernel", vm.KERNELS)
def test_each_kernel_boots_with_pku_and_pkey_alloc_works(
    kernel: str, pkey_alloc_program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    booted = vm.provision(kernel=kernel).kernel
    expected = booted.version
    capsys.readouterr()
    result = vm.run(
        [
            "sh",
            "-c",
            'uname -r; grep -m1 "^flags" /proc/cpuinfo | tr " " "\\n" | grep -x -e pku -e ospke;'
            ' "$0"',
            str(pkey_alloc_program),
        ],
        timeout=300,
        kernel=kernel,
    )
    assert result.returncode == 0, result.output
    release, *flags, pkey = result.output.split()
    assert release == expected
    # Every run says which kernel it booted (issue 18), pinned or not.
    assert f"pkeyguard-vm: guest kernel {booted.describe()}\n" in capsys.readouterr().err
    assert flags == ["pku", "ospke"]
    assert pkey.startswith("pkey=")
    assert int(pkey.removeprefix("pkey=")) >= 1
    assert not _qemu_children()
    print(f"{kernel} {release}: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))


@pytest.mark.boot
def test_end_to_end_pku() -> None:
    result = vm.run(["sh", "-c", "grep -o -w pku /proc/cpuinfo | head -1; exit 7"], timeout=300)
    assert result.returncode == 7
    assert "pku" in result.output.split()
    assert set(result.timings) >= {"provision", "boot", "command", "total"}
    assert not _qemu_children()


@pytest.mark.boot
def test_end_to_end_without_pku() -> None:
    result = vm.run(["sh", "-c", "grep -c -w pku /proc/cpuinfo; exit 0"], timeout=300, pku=False)
    assert result.returncode == 0
    assert result.output.split() == ["0"]


@pytest.mark.boot
def test_pkey_alloc_in_guest_with_host_cwd_and_env(tmp_path: Path) -> None:
    subprocess.run(
        ["gcc", "-O2", "-o", str(tmp_path / "pkey_alloc"), str(PKEY_ALLOC_C)], check=True
    )
    env = dict(os.environ, PKGVM_TEST_WEIRD=WEIRD)
    result = vm.run(
        [
            "sh",
            "-c",
            './pkey_alloc && pwd && printf "<%s>" "$PKGVM_TEST_WEIRD"'
            ' && echo kept > "$PKEYGUARD_VM_OUT/result.txt" && echo lost > lost.txt',
        ],
        timeout=300,
        cwd=str(tmp_path),
        env=env,
        out_dir=tmp_path / "out",
    )
    assert result.returncode == 0, result.output
    first, second, rest = result.output.split("\n", 2)
    assert first.startswith("pkey=")
    assert int(first.removeprefix("pkey=")) >= 1
    assert second == str(tmp_path)
    assert rest == f"<{WEIRD}>"
    assert (tmp_path / "out" / "result.txt").read_text() == "kept\n"
    assert not (tmp_path / "lost.txt").exists()  # the host's / is read-only in the guest


@pytest.mark.boot
def test_guest_without_pku_refuses_to_run_the_command() -> None:
    with pytest.raises(vm.NoPKUError, match="no usable PKU") as info:
        vm.run(["sh", "-c", "echo must-not-run"], timeout=300, cpu="max,-pku")
    assert "must-not-run" not in str(info.value)


@pytest.mark.boot
def test_timeout_kills_qemu(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert vm.main(["--timeout", "4", "--", "sleep", "60"]) == vm.EXIT_TIMEOUT
    assert time.monotonic() - start < 20
    assert "timed out after 4 s" in capsys.readouterr().err
    assert not _qemu_children()


@pytest.mark.boot
def test_kernel_panic_is_reported() -> None:
    with pytest.raises(vm.VMError, match="panicked") as info:
        vm.run(["sh", "-c", "echo c > /proc/sysrq-trigger"], timeout=300)
    assert "Kernel panic - not syncing" in str(info.value)


@pytest.mark.boot
def test_sigterm_of_the_cli_kills_qemu() -> None:
    runner = subprocess.Popen(
        [sys.executable, "-m", "pkeyguard_vm", "--", "sh", "-c", "echo ready; sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    assert runner.stdout is not None
    try:
        # The line arrives while the command still runs: output is streamed live.
        ready, _, _ = select.select([runner.stdout], [], [], 120)
        assert ready, "no output from the guest"
        assert runner.stdout.readline() == b"ready\n"
        qemu = _qemu_children(runner.pid)
        assert len(qemu) == 1
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert not Path(f"/proc/{qemu[0]}").exists()
    assert runner.stderr is not None
    assert b"terminated by signal 15" in runner.stderr.read()
