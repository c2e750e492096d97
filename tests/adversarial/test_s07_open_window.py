"""All secrets share one key, and from_fd/from_file/from_stream/from_prompt hold a ReadWrite
guard on it for the whole blocking read.  The child program is ``children/s_open_window.py``."""

import pytest

from tests.adversarial.support import assert_survived, run_case


@pytest.mark.parametrize("backing", ["memfd_secret", "mmap"])
def test_a_stalled_reader_must_not_open_every_other_secret(backing: str) -> None:
    """DEFECT (mprotect backend, the one most VMs get): while one thread waits in
    Secret.from_fd() for a peer that stalls (a socket, a pipe, a FIFO, a prompt), the
    shared key's ReadWrite guard is active, so *every other secret of the process* is mapped
    rw- for every thread, for as long as the peer likes: a stray read or write anywhere
    reaches a long-lived key outside any reveal().  README: a secret is "tagged with a key
    that is NoAccess outside reveal()", and tells users to keep reveal blocks short; the
    library itself holds the window open across a blocking read(2) whose length a remote
    peer controls."""
    child = run_case(
        "s_open_window",
        "case_a_stalled_reader_must_not_open_every_other_secret",
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)
