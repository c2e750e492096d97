"""A reader blocked in from_fd must not open other secrets (the child program of
``test_s07_open_window.py``)."""

from __future__ import annotations

import os
import threading
import time

from pkeyguard import Secret, allocator
from tests.adversarial.childlib import params
from tests.childhelpers import say
from tests.support import perms_at


def case_a_stalled_reader_must_not_open_every_other_secret() -> None:
    s = Secret(18, allocator=allocator.Secure(backing=params()["backing"]))
    s.write(0, b"LONG-LIVED-API-KEY")
    idle = perms_at(s.address)
    r, w = os.pipe()
    th = threading.Thread(target=lambda: Secret.from_fd(r).close(), daemon=True)
    th.start()
    time.sleep(0.3)  # the reader blocks in readv: the peer stalls
    during = perms_at(s.address)
    os.write(w, b"x")
    os.close(w)
    th.join()
    say("secret pages idle:", idle, "| while another thread waits in from_fd:", during)
    assert not during.startswith(("r", "rw")), (
        f"an unrelated secret is {during} while a reader waits for its peer"
    )
