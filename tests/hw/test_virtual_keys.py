"""Virtual keys (issue 11) on real (emulated) PKU: the invariants, each proved by the CPU.

Most tests run in a child process: a fresh process holds no other keys, no quarantined
numbers and a PKRU with every key but 0 closed, so each thread's PKRU can be predicted
whole; and the raw reads that must fault kill only the child.  A fault counts only where
it is asserted: the child's stderr must show ``FAULT signo=11 code=4`` (``SEGV_PKUERR``, the
key's number) or ``code=2`` (``SEGV_ACCERR``: the pages were parked, ``PROT_NONE``), and the
line before it says which was expected.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any, Final

import pkeyguard
from pkeyguard import PkeyGuard, PkeyPermissions, Secret, _core
from tests.adversarial.support import run_case
from tests.profiles import vk_state_examples
from tests.statemodel import bits_of
from tests.support import Child, pkey_at, secret_key
from tests.unit.test_state_machine import lookup, smaps_pkeys
from tests.unit.test_virtual_keys import VirtualKeysMachine

RW: Final = PkeyPermissions.ReadWrite
RO: Final = PkeyPermissions.ReadOnly
NA: Final = PkeyPermissions.NoAccess

SEGV_ACCERR, SEGV_PKUERR = 2, 4

CHILD = "tests.hw.children.v_virtual_keys"


def run(case: str, faultprobe_path: str, timeout: float = 300, **params: object) -> Child:
    """Run ``case`` of the child module on pku, the fault probe installed."""
    env = {"FAULTPROBE": faultprobe_path, "PKEYGUARD_BACKEND": "pku"}
    return run_case(
        CHILD,
        case,
        params=params,
        env=env,
        timeout=timeout,
        watchdog=timeout,
        fault_handler=False,
    )


def assert_faulted(child: Child, *, number: int | None) -> int:
    """The child died of SIGSEGV at the asserted read: ``SEGV_PKUERR`` with the key's number,
    or, where ``number`` is None (the pages were parked), ``SEGV_ACCERR``.  Returns the code."""
    assert child.returncode == -signal.SIGSEGV, child
    assert "NOT REACHED" not in child.stdout, child
    m = re.search(r"FAULT signo=(\d+) code=(\d+) pkey=(-?\d+)", child.stderr)
    assert m, child
    code, pkey = int(m.group(2)), int(m.group(3))
    if number is None:
        assert (code, pkey) == (SEGV_ACCERR, -1), f"expected a parked page (ACCERR): {child}"
    else:
        assert (code, pkey) == (SEGV_PKUERR, number), f"expected PKUERR, key {number}: {child}"
    return code


def said(child: Child, word: str) -> list[str]:
    """The words after ``word`` on the child's stdout line that starts with it."""
    for line in child.stdout.splitlines():
        if line.split()[:1] == [word]:
            return line.split()[1:]
    raise AssertionError(f"no {word!r} line: {child}")


def test_a_thousand_keys_and_a_thousand_secrets_coexist(faultprobe_path: str) -> None:
    """Issue 11's first "done when": no limit but memory; each one usable, values intact.
    In a child: afterwards the pool holds 15 numbers for NoAccess keys for good (it never
    frees one), and keys with initial rights could not be made in this process any more."""
    child = run("case_thousand", faultprobe_path, timeout=600)
    assert child.returncode == 0, child
    assert said(child, "THOUSAND")[0] == "2000", child
    assert said(child, "CLOSED") == ["0"], child


def test_random_switches_on_four_threads_keep_each_threads_rights(faultprobe_path: str) -> None:
    """≥100,000 guard entries over 24 keys on 4 threads: after each entry, the thread's PKRU
    opens exactly its own active guards' (current) numbers; every owner reads back what it
    wrote; and at the end a raw read of another key's region faults."""
    switches = int(os.environ.get("PKEYGUARD_VK_SWITCHES", "100000"))
    child = run("case_switches", faultprobe_path, timeout=900, switches=switches)
    env_switches = said(child, "SWITCHES")
    assert said(child, "ERRORS") == ["0"], child
    assert int(env_switches[0]) >= switches, child
    counts = dict(word.split("=") for word in env_switches[2:])
    assert int(counts["evictions"]) > 1000 and int(counts["misses"]) > 1000, counts
    assert said(child, "VALUES") == ["ok"], child
    target = said(child, "TARGET")[0]
    assert_faulted(child, number=None if target == "None" else int(target))
    print(f"random switches: {' '.join(env_switches)}")


def test_raw_read_of_another_keys_region_faults_held_and_parked(faultprobe_path: str) -> None:
    """Both ways a closed key's pages are closed: its number closed in this thread's PKRU
    (SEGV_PKUERR), or parked (PROT_NONE: SEGV_ACCERR)."""
    held = run("case_raw_read_held_or_parked", faultprobe_path, limit=15)
    number = int(said(held, "B")[0])
    assert said(held, "B-BITS") == ["1"], held
    assert_faulted(held, number=number)
    parked = run("case_raw_read_held_or_parked", faultprobe_path, limit=2)
    assert said(parked, "B") == ["None"], parked
    assert_faulted(parked, number=None)


def test_a_reused_number_never_reaches_another_keys_pages(faultprobe_path: str) -> None:
    """Issue 11's second invariant, as far as user space can hold it.  Threads started inside
    x's ReadWrite guard inherit its number open (the CPU copies PKRU at thread creation;
    pkey_alloc/pkey_free and WRPKRU change only the calling thread).  Another thread then
    evicts x and gives its number to y.  A stale thread's first guard entry closes the stale
    bits, after which its raw read of y's pages faults."""
    child = run("case_stale_thread", faultprobe_path, first_entry=True)
    x_line = said(child, "X")
    n = int(x_line[0])
    assert x_line[1:] == ["BITS-IN-GUARD", "0"], child
    assert said(child, "Y") == [str(n), "X", "None", "REUSED", "True"], child
    # Inherited open (0) before; closed (1) from its first entry on, under a NoAccess guard
    # on another key; and its rights through y are none.
    assert said(child, "CHECKER") == ["0", "1", "1", "0"], child
    assert "READ" not in child.stdout, f"a stale thread read y's pages: {child}"
    assert_faulted(child, number=n)


def test_a_thread_started_inside_a_guard_reaches_a_reused_number_until_its_first_entry(
    faultprobe_path: str,
) -> None:
    """The limit of the lazy sync, documented in the README ("Virtual keys"): a thread that
    inherited x's number open and never enters a pkeyguard guard keeps it open, so once the
    number has passed to y it can read y's pages raw.  No process can write another thread's
    PKRU; closing the number in every thread at reuse would take a kernel change (libmpk used
    a kernel module).  If this read ever faults, the docs can promise more."""
    child = run("case_stale_thread", faultprobe_path, first_entry=False)
    n = int(said(child, "X")[0])
    assert said(child, "Y") == [str(n), "X", "None", "REUSED", "True"], child
    assert said(child, "READ") == [hex(0xC0FFEE)], child


# -- class 8 of issue 18: numbers of keys created with initial rights ----------------------

# The children: case_pinned_creator (thread C creates x ReadWrite, another thread closes
# it, C writes a later key's pages raw; with sync, C first enters a guard on another key)
# and case_pinned_heir (a thread started while x was open does the same).


def test_the_creator_of_a_closed_pinned_key_cannot_write_a_later_keys_pages(
    faultprobe_path: str,
) -> None:
    """Class 8 of issue 18, the creator as the attacker: after another thread closed x, C
    still has x's number open (the CPU's PKRU is per thread); y, made ReadOnly by a third
    thread, must not be writable by C: C's raw write faults on y's number."""
    child = run("case_pinned_creator", faultprobe_path, sync=False)
    words = said(child, "CREATOR")
    n, m = int(words[0]), int(words[2])
    assert words[1] == "0", f"the attack: C should still hold x's number open: {child}"
    assert said(child, "Y") == [str(m), "REUSED", "False"], child
    assert "WROTE" not in child.stdout, f"C wrote y's pages: {child}"
    assert m != n and words[3] == "1", child
    assert_faulted(child, number=m)


def test_a_thread_started_while_a_pinned_key_was_open_cannot_write_a_later_keys_pages(
    faultprobe_path: str,
) -> None:
    """The same with a thread that inherited x's rights when it started (the creator itself
    closed x, which closes the number in the creator only)."""
    child = run("case_pinned_heir", faultprobe_path)
    words = said(child, "HEIR")
    n, m = int(words[0]), int(words[2])
    assert words[1] == "0", f"the attack: H should still hold x's number open: {child}"
    assert "WROTE" not in child.stdout, f"H wrote y's pages: {child}"
    assert m != n and words[3] == "1", child
    assert_faulted(child, number=m)


def test_a_closed_pinned_keys_number_is_reused_once_its_creator_entered_a_guard(
    faultprobe_path: str,
) -> None:
    """What the wait costs, and that it ends: once C entered a guard after the close (its
    sync closed x's number in it), y takes x's number, and C's raw write faults on it."""
    child = run("case_pinned_creator", faultprobe_path, sync=True)
    words = said(child, "CREATOR")
    n = int(words[0])
    assert said(child, "Y") == [str(n), "REUSED", "True"], child
    assert words == [str(n), "1", str(n), "1"], child
    assert "WROTE" not in child.stdout, f"C wrote y's pages: {child}"
    assert_faulted(child, number=n)


def test_per_thread_rights_hold_under_eviction_from_a_third_thread(faultprobe_path: str) -> None:
    """Thread A inside ReadWrite on x; thread C forces hundreds of evictions and re-tags of
    other keys meanwhile (x keeps its number); thread B is denied: a raw read faults."""
    child = run("case_denied_under_eviction", faultprobe_path)
    n = int(said(child, "X")[0])
    log = " ".join(said(child, "LOG"))
    assert f"A {n} 0" in log and "A-after 8 0" in log and "lost" not in log, child
    assert f"C-tag {n} {n}" in log, child  # x's pages kept their tag throughout
    evictions = said(child, "EVICTIONS")
    assert int(evictions[0]) >= 100 and int(evictions[2]) >= 100, child
    assert said(child, "B") == ["NoAccess", "0", "1"], child
    assert_faulted(child, number=n)


def test_revealing_one_secret_leaves_another_closed(faultprobe_path: str) -> None:
    """Issue 11, part 3: one key per Secret.  Inside ``a.reveal()`` a raw read of secret b
    faults (b's number closed in this thread, or b parked)."""
    child = run("case_two_secrets", faultprobe_path)
    assert said(child, "DISTINCT") == ["True"], child
    assert said(child, "A") == ["alpha-secret"], child
    b = said(child, "B")
    if b[0] == "None":
        assert b[1:] == ["None", "0"], child
        assert_faulted(child, number=None)
    else:
        assert b[1:] == ["1", "0"], child
        assert_faulted(child, number=int(b[0]))


def test_revealing_one_secret_in_process() -> None:
    """The same without a crash: inside a.reveal(), b's key gives this thread nothing."""
    a = Secret.from_bytes(bytearray(b"alpha"))
    b = Secret.from_bytes(bytearray(b"bravo"))
    try:
        kb: Any = secret_key(b)
        with a.reveal() as buf:
            assert bytes(buf) == b"alpha"
            assert kb._thread_level() == 0
            n = kb.hardware_key
            if n is not None:
                assert bits_of(_core.rdpkru(), n) == 1
                assert pkey_at(b.address) == n
            else:
                assert pkey_at(b.address) == 0
    finally:
        a.close()
        b.close()


# -- the state machine of tests/unit/test_virtual_keys.py, on pku --------------------------


class PkuVirtualKeysMachine(VirtualKeysMachine):
    """Same rules and invariants on pku: the PKRU register compared whole on each thread,
    raw accesses only where page rights *and* PKRU allow them (a wrong model is a fault),
    and every region's key tag from smaps (its number while held; 0 parked or untagged)."""

    MODE = _core.MODE_PKU
    ENFORCED = True

    def __init__(self) -> None:
        assert pkeyguard.backend().name == "pku"  # chosen (RDPKRU enabled) before any read
        super().__init__()

    MAPS_EVERY_STEP = False  # the guest is slow: maps after steps that change page rights,
    TAGS_EVERY = 4  # and smaps (the slowest: page walks) every 4th such step and at the end

    @staticmethod
    def make_key(rights: PkeyPermissions) -> PkeyGuard:
        return PkeyGuard(rights)

    @staticmethod
    def read_pkru() -> int:
        return _core.rdpkru()

    def new_thread_pkru(self) -> int:
        return self.pkru(0)  # a new thread copies its creator's PKRU

    def check_tags(self) -> None:
        tags = smaps_pkeys()
        for r in self.live_regions():
            want = r.key.number if r.key is not None and r.key.number is not None else 0
            got = lookup(tags, r.address)
            assert got == want, f"{r!r}: smaps says key {got}, model {want}"


def test_state_machine_on_pku() -> None:
    """The pool's state machine on the pku backend (≥200 examples in CI), in a fresh process
    (no other keys, no quarantine, the initial PKRU)."""
    examples = vk_state_examples(guest=True)
    child = run_case(
        CHILD,
        "case_state_machine",
        params={"examples": examples},
        env={"PKEYGUARD_BACKEND": "pku"},
        timeout=1500,
        watchdog=1500,
    )
    assert child.returncode == 0, child
    words = said(child, "MACHINE")
    assert words[0] == str(examples), child
    print(f"state machine on pku: {' '.join(words)}")
