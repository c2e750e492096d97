"""Class 3: guards of a thread that ends are ended with it; a fork child keeps only the
forking thread's guards.

Threads die inside guards entered with a manual ``__enter__`` (nested, on several keys,
inside ``isolated()``); later ``__exit__`` calls come from the main thread and from new
threads that reuse the dead thread's ident; a fork happens while another thread holds a
guard.  The child programs: children/c03_thread_end_and_fork.py.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case

CHILD = "c03_thread_end_and_fork"


def test_guards_of_a_finished_thread_are_ended() -> None:
    """Class 3: a thread that ends inside nested guards on two keys: its guards become
    inactive, their views raise ViewError, active_guards drops to 0, its rights stop
    counting (pages back to NoAccess on mprotect), a later __exit__ from the main thread
    raises GuardStateError, and disassociate()/region.close()/key.close() work again."""
    child = run_case(CHILD, "case_guards_of_a_finished_thread_are_ended", timeout=60, watchdog=30)
    assert_survived(child)


def test_exit_from_a_new_thread_with_the_dead_threads_ident() -> None:
    """Class 3: a thread enters a guard and ends; a new thread (which usually gets the same
    threading.get_ident()) calls that guard's __exit__ and uses its view: GuardStateError
    and ViewError, and the new thread then uses the key normally (the old core
    dereferences a NULL stack top here: SIGSEGV)."""
    child = run_case(
        CHILD,
        "case_exit_from_a_new_thread_with_the_dead_threads_ident",
        params={"rounds": 30},
        timeout=60,
        watchdog=40,
    )
    assert_survived(child)


def test_threads_dying_in_random_guard_stacks() -> None:
    """Class 3 (seeded random rounds): threads die inside random stacks of guards on two
    keys, sometimes inside isolated(); each time every guard ends, pages go back to
    NoAccess, another thread's __exit__ gets GuardStateError and the keys stay usable;
    at the end nothing leaks."""
    child = run_case(
        CHILD,
        "case_threads_dying_in_random_guard_stacks",
        params={"rounds": 30, "seed": 3},
        timeout=90,
        watchdog=60,
    )
    assert_survived(child)


def test_fork_child_keeps_only_the_forking_threads_guards() -> None:
    """Class 3: fork while another thread holds a ReadOnly guard and the forking thread a
    ReadWrite one: in the child the other thread's guard is ended (inactive, its view
    raises ViewError, its __exit__ raises GuardStateError), the forking thread's guard still
    works and exits normally, and the region and key can then be closed there."""
    child = run_case(
        CHILD,
        "case_fork_child_keeps_only_the_forking_threads_guards",
        timeout=60,
        watchdog=45,
    )
    assert_survived(child)
