"""A child made by a raw clone() (no pthread_atfork handlers run).  docs/architecture.md:
the pid "stays as a second test for a child made by a raw clone() that runs no fork
handlers"; README: in a fork child "close() works there"; architecture: the DONTFORK hole
"where any later mmap could land and where the core would then re-protect, wipe or unmap
someone else's memory".  The child programs are ``children/s_raw_clone.py``."""

from tests.adversarial.support import assert_survived, run_case


def test_raw_clone_child_close_unmaps_the_childs_own_memory() -> None:
    """DEFECT: in a raw-clone child the memfd_secret pages are a hole (MADV_DONTFORK, no
    atfork handler filled it).  The child's own mmap.mmap(-1, 4096) lands there; closing the
    inherited Secret then unmaps (wipes) the child's mmap: the next access is SIGSEGV."""
    child = run_case(
        "s_raw_clone",
        "case_raw_clone_child_close_unmaps_the_childs_own_memory",
        watchdog=30,
    )
    assert_survived(child)


def test_raw_clone_child_close_works() -> None:
    """DEFECT: README "close() works there"; in a raw-clone child with nothing in the hole,
    close() raises MprotectError ENOMEM (mprotect of the hole), and an open inherited secret
    makes interpreter exit print 'Exception ignored ... releasing a secure region at exit'."""
    child = run_case(
        "s_raw_clone",
        "case_raw_clone_child_close_works",
        watchdog=30,
    )
    assert_survived(child)
