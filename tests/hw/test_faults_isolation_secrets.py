"""Issue 6 on real (emulated) PKU: fault reports, isolated native calls, secrets."""

from __future__ import annotations

import ctypes
import re
import signal
import threading
from typing import Final

from pkeyguard import PkeyGuard, PkeyPermissions, RegionGuard, Secret, _core, isolated
from tests.adversarial.support import run_case
from tests.support import Child, secret_key

RW: Final = PkeyPermissions.ReadWrite

CHILD = "tests.hw.children.h_faults_isolation_secrets"


def run(case: str, faultprobe_path: str) -> Child:
    env = {"FAULTPROBE": faultprobe_path, "PKEYGUARD_BACKEND": "pku"}
    return run_case(CHILD, case, env=env, fault_handler=False)


def parsed(child: Child) -> tuple[int, int]:
    m = re.search(r"ADDR (0x[0-9a-f]+) KEY (\d+)", child.stdout)
    assert m, child
    return int(m.group(1), 16), int(m.group(2))


def test_report_for_write_under_read_only(faultprobe_path: str) -> None:
    child = run("case_write_under_read_only", faultprobe_path)
    assert child.returncode == -signal.SIGSEGV, child
    addr, key = parsed(child)
    err = child.stderr
    assert f"protection fault: write at {addr + 4:#x} (SEGV_PKUERR" in err, err
    assert f"region: 'session-key (c_int)' [{addr:#x}, {addr + 4096:#x}) offset 4" in err
    assert f"\n  key: {key}\n" in err
    assert re.search(r"thread rights for the key: read-only \(PKRU 0x[0-9a-f]+\)", err), err
    assert "Fatal Python error: Segmentation fault" in err


def test_isolated_native_call_dies_with_pkuerr_and_names_the_region(faultprobe_path: str) -> None:
    child = run("case_isolated_native_call", faultprobe_path)
    assert child.returncode == -signal.SIGSEGV, child
    assert "outside 77" in child.stdout and "NOT REACHED" not in child.stdout
    addr, key = parsed(child)
    err = child.stderr
    assert f"protection fault: read at {addr:#x} (SEGV_PKUERR" in err, err
    assert "region: 'session-key (c_int)'" in err and f"\n  key: {key}\n" in err
    assert "thread rights for the key: no-access" in err


def test_isolation_is_per_thread_and_restored() -> None:
    with RegionGuard(ctypes.c_int) as region, PkeyGuard(RW) as key:
        key.associate(region)
        start = _core.rdpkru()
        other_saw: list[str] = []
        inside = threading.Event()
        done = threading.Event()

        def other() -> None:
            inside.wait(10)
            other_saw.append(key.current_rights().name)
            done.set()

        t = threading.Thread(target=other)
        t.start()
        with isolated():
            assert key.current_rights() is PkeyPermissions.NoAccess
            inside.set()
            done.wait(10)
        t.join()
        assert other_saw == ["ReadWrite"]
        assert _core.rdpkru() == start


def test_secret_on_pku(faultprobe_path: str) -> None:
    with Secret.from_bytes(b"hunter2") as secret:
        own_key = secret_key(secret)  # each secret's own (not exposed on Secret)
        assert own_key.backend == "pku"
        with secret.reveal() as buf:
            assert bytes(buf) == b"hunter2"
            assert own_key.current_rights() is PkeyPermissions.ReadOnly
        assert own_key.current_rights() is PkeyPermissions.NoAccess
    child = run_case(
        CHILD, "case_stray_read_of_a_secret", env={"PKEYGUARD_BACKEND": "pku"}, fault_handler=False
    )
    assert child.returncode == -signal.SIGSEGV
    assert "SEGV_PKUERR" in child.stderr and "region: 'db-password (bytes)'" in child.stderr
