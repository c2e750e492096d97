"""Class v1: attacks on virtual keys (issue 11), in the simulated pool (``MODE_SIM``: the pku
backend's pool with a thread-local PKRU and mprotect tags), so they run on any machine.

A thread that inherited a number open (the CPU copies PKRU at thread creation; here
``_sim_set_pkru`` plays that part) must have every NoAccess-class number closed from its
first guard entry on, whatever happens to the number before or after; the collector taking
a region apart after a failed untag must not leave the pool walking a dead binding; and user
code that clears a thread's state dict inside a guard must not leave the thread's number
open while the pool thinks the key can be evicted.  The child programs are
``children/v_virtual_keys.py``.
"""

from __future__ import annotations

from tests.adversarial.support import assert_survived, run_case


def test_stale_thread_loses_a_number_that_was_free_at_its_first_entry() -> None:
    """A worker inherits A's number open, A closes (its number is then free), the worker
    enters a guard on B, and a new key C takes A's old number: the worker must not have it
    open (before the fix the sync skipped numbers without an owner, and C's pages were
    readable by the worker)."""
    child = run_case(
        "v_virtual_keys", "case_stale_thread_loses_a_number_that_was_free_at_its_first_entry"
    )
    assert_survived(child)


def test_stale_thread_never_keeps_rights_to_a_key_made_with_rights() -> None:
    """A worker inherits V's number open; V closes; a key made with ReadWrite must not get
    that number (the sync never closes such keys' numbers, so the worker would keep the
    access for good), and the worker's first entry closes the old number."""
    child = run_case(
        "v_virtual_keys", "case_stale_thread_never_keeps_rights_to_a_key_made_with_rights"
    )
    assert_survived(child)


def test_collector_after_a_failed_untag_does_not_crash_the_pool() -> None:
    """The untag of a region the collector takes apart fails (here its page was unmapped
    behind the library's back; at vm.max_map_count it is ENOMEM): the binding must end
    anyway, the key must never give its number away, and later evictions and the key's
    close must not touch a dead binding (it was a SIGSEGV)."""
    child = run_case(
        "v_virtual_keys", "case_collector_after_a_failed_untag_does_not_crash_the_pool"
    )
    assert_survived(child)


def test_clearing_the_thread_state_dict_inside_a_guard_closes_the_number() -> None:
    """User code clears the thread's state dict inside a ReadWrite guard: the guard ends
    (its stack is dropped) and the key can be evicted, so the thread's bits for its number
    must be closed too, or the thread would reach the next owner's pages."""
    child = run_case(
        "v_virtual_keys", "case_clearing_the_thread_state_dict_inside_a_guard_closes_the_number"
    )
    assert_survived(child)
