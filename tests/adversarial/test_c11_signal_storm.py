"""Class 11: asynchronous exceptions.  A SIGALRM timer every 50-200 microseconds raises
KeyboardInterrupt at arbitrary bytecodes inside the library's operations; afterwards no guard
is left on the thread, the key count is back to the start, no anonymous mapping is left and
every secret is unmapped."""

from __future__ import annotations

import pytest

from tests.adversarial.support import assert_survived, attack

_STORM = """
import hashlib, random, signal

rnd = random.Random(PARAMS["seed"])
# Warm every path once (lazily created library state is not a leak).
with isolated():
    pass
Secret.from_chunks([b"warm", b"up"]).close()
warm_key = PkeyGuard()
warm_region = RegionGuard(ctypes.c_uint32)
warm_key.associate(warm_region)
warm_region.close()
warm_key.close()
snap = snapshot()

base_key = PkeyGuard()
base_region = RegionGuard(64)
base_assoc = base_key.associate(base_region)
# More open keys: each isolated() block enters (and must unwind) one guard per key.
extra_keys = [PkeyGuard() for _ in range(PARAMS["extra_keys"])]
secret_addresses = []


def op_isolated():
    with isolated():
        pass


def op_isolated_allow():
    with isolated(allow=[base_key]):
        with base_assoc.set_access_rights(RW) as g:
            g.mut_ref_guard()[0] = 1


def op_guards():
    with base_assoc.set_access_rights(RW) as g:
        v = g.mut_ref_guard()
        v[1] = 2
        with base_assoc.set_access_rights(RO) as r:
            r.ref_guard()[1]
            with base_assoc.set_access_rights(NA):
                pass
        with memoryview(v) as m:
            m[2] = 3


def op_region():
    region = RegionGuard(ctypes.c_uint32)
    try:
        key = PkeyGuard()
        try:
            assoc = key.associate(region)
            with assoc.set_access_rights(RW) as g:
                g.mut_ref_guard().value = 3
            assoc.disassociate()
        finally:
            key.close()
    finally:
        region.close()


def op_secret_bytes():
    s = Secret.from_bytes(bytearray(b"storm secret " * 4))
    secret_addresses.append(secret_address(s))
    try:
        with s.reveal() as b:
            hashlib.sha256(b).digest()
    finally:
        s.close()


def op_secret_chunks():
    s = Secret.from_chunks([b"a" * 100, bytearray(b"b" * 5000), memoryview(b"c" * 10)])
    secret_addresses.append(secret_address(s))
    s.close()


def op_secret_dropped():
    s = Secret.from_bytes(bytearray(b"dropped"))
    secret_addresses.append(secret_address(s))
    del s


OPS = {f.__name__: f for f in (op_isolated, op_isolated_allow, op_guards, op_region,
                                op_secret_bytes, op_secret_chunks, op_secret_dropped)}
ops = [OPS[name] for name in PARAMS["ops"]]
armed = [False]
counts = {"interrupted": 0, "completed": 0, "stray": 0}
errors = []


def on_alarm(signum, frame):
    if armed[0]:
        raise KeyboardInterrupt


signal.signal(signal.SIGALRM, on_alarm)
deadline = time.monotonic() + PARAMS["seconds"]
try:
    while time.monotonic() < deadline:
        try:
            period = rnd.choice([50e-6, 80e-6, 120e-6, 200e-6])
            signal.setitimer(signal.ITIMER_REAL, period, period)
            for op in ops:
                try:
                    armed[0] = True
                    op()
                    counts["completed"] += 1
                except KeyboardInterrupt:
                    counts["interrupted"] += 1
                except PkeyguardError as exc:
                    counts.setdefault("pkeyguard errors", 0)
                    counts["pkeyguard errors"] += 1
                except BaseException as exc:
                    kind = f"{type(exc).__module__}.{type(exc).__name__}"
                    errors.append(f"{op.__name__}: {kind}: {exc}")
                finally:
                    armed[0] = False
        except KeyboardInterrupt:
            counts["stray"] += 1
finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    armed[0] = False
print("storm", counts, flush=True)
assert counts["interrupted"] > 0 and counts["completed"] > 0, counts
assert not errors, errors[:5]
left = _core.thread_guards()
assert left == [], f"guards left on the thread after the storm: {left!r}"
with base_assoc.set_access_rights(RW) as g:
    g.mut_ref_guard()[0] = 9
base_region.close()
base_key.close()
for k in extra_keys:
    k.close()
assert_clean(snap, "signal storm")  # the secrets' key is freed: no secret is left bound
for address in set(secret_addresses):
    # The kernel may have reused the address for other memory since (a Python arena, say):
    # what must not be there is a secret's closed pages.
    assert perms_at(address) in ("", "rw-p"), f"a secret's pages are still mapped at {address:#x}"
"""

GROUPS = {
    "guards-and-isolated": ["op_isolated", "op_isolated_allow", "op_guards"],
    "regions-and-keys": ["op_region", "op_guards"],
    "secrets": ["op_secret_bytes", "op_secret_chunks", "op_secret_dropped"],
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_keyboard_interrupt_storm(group: str) -> None:
    """Class 11: a SIGALRM handler raising KeyboardInterrupt every 50-200 us while the child
    loops over isolated(), guard blocks (nested, with memoryviews), RegionGuard(),
    PkeyGuard(), associate()/disassociate(), Secret.from_bytes()/from_chunks()/reveal()/
    close(); afterwards exact accounting: no guard on the thread, keys back to the start, no
    new mapping, no secret mapped; only KeyboardInterrupt (or a pkeyguard error) escapes an
    operation."""
    child = attack(
        _STORM,
        params={"ops": GROUPS[group], "seconds": 3.0, "seed": 11, "extra_keys": 8},
        timeout=90,
        watchdog=60,
    )
    assert_survived(child)
