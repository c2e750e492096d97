"""All secrets share one key, and from_fd/from_file/from_stream/from_prompt hold a ReadWrite
guard on it for the whole blocking read."""

import pytest

from tests.adversarial.support import assert_survived, attack


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
    child = attack(
        """
        S = Secret(18, allocator=allocator.Secure(backing=PARAMS["backing"]))
        S.write(0, b"LONG-LIVED-API-KEY")
        def perms(addr):
            for line in open("/proc/self/maps"):
                a, b = (int(x, 16) for x in line.split()[0].split("-"))
                if a <= addr < b:
                    return line.split()[1]
        idle = perms(S.address)
        r, w = os.pipe()
        th = threading.Thread(target=lambda: Secret.from_fd(r).close(), daemon=True)
        th.start()
        time.sleep(0.3)             # the reader blocks in readv: the peer stalls
        during = perms(S.address)
        os.write(w, b"x"); os.close(w); th.join()
        print("secret pages idle:", idle, "| while another thread waits in from_fd:", during)
        assert not during.startswith(("r", "rw")), (
            f"an unrelated secret is {during} while a reader waits for its peer")
        """,
        params={"backing": backing},
        watchdog=30,
    )
    assert_survived(child)
