/*
 * The key pool's interface: virtual keys over the hardware key numbers (MODE_PKU) or the
 * simulated ones (MODE_SIM).  The pool itself, and the rules that make a reused number safe,
 * are in _keypool.c.  Included by _core.h (after the mode enum and the forward typedefs,
 * before the object structs, which embed a KeySlot).
 *
 * What the rest of the core may touch: a key's KeySlot through these functions (and `hw`,
 * read-only: the number the key holds now, -1 while parked; `opening`, counted by the guards
 * that open the key); the pool's counters only through pool_touch and the hits/misses the
 * guard entry counts.  Everything runs with the GIL held, except pool_thread_gone (a thread's
 * exit, under the registry's lock) and the fork child's pool_threads_fork_child.
 */
#ifndef PKEYGUARD_KEYPOOL_H
#define PKEYGUARD_KEYPOOL_H

#include <stdint.h>

#include "_arch.h"

#define POOL_NUMBERS NR_PKEYS /* numbers 1..NR_PKEYS-1 can be allocated (0 is the default) */
#define POOL_ALLOCATABLE (((uint32_t)1 << POOL_NUMBERS) - 2u) /* bits 1..NR_PKEYS-1 */
#define POOL_EXHAUSTED (-1)

/* A key's state in the pool (pku and sim keys; unused on the other modes). */
typedef struct KeySlot {
    int hw;             /* the hardware number it holds now, -1 while parked */
    int pinned;         /* created with rights: holds its number for life */
    Py_ssize_t opening; /* active guards that open it (ReadOnly/ReadWrite), all threads */
    uint64_t last_use;  /* the pool's clock at the latest guard entry (LRU) */
    int leaked;         /* pages no longer bound kept its number (never give it up) */
} KeySlot;

typedef struct KeyPool {
    int limit;                 /* the most numbers to hold at once (1..15) */
    KeyObject *owner[POOL_NUMBERS]; /* borrowed: the key holding each number */
    uint32_t held;             /* numbers allocated by this pool (never freed) */
    uint32_t owned;            /* held numbers with an owner */
    uint32_t pinned_class;     /* held numbers for pinned keys only (the rest: virtual) */
    uint32_t lost;             /* never used again: pages kept the tag when untagging failed */
    uint32_t clean;            /* retired pinned numbers proved closed in every thread */
    uint64_t epoch;            /* bumped whenever a number gets a new owner or is retired */
    uint64_t tick;             /* the LRU clock */
    /* Pinned numbers: the epoch before the latest take and the clock tick read before it,
     * and the epoch at which it was retired (closed): see pool_pinned_reusable. */
    uint64_t taken_at[POOL_NUMBERS], retired_at[POOL_NUMBERS];
    long long taken_tick[POOL_NUMBERS];
    unsigned long long hits, misses, evictions, retags, parks, allocs, exhausted, syncs;
    unsigned long long pinned_waits; /* a pinned key could not take a retired number */
} KeyPool;

/* One pool per mode (only MODE_PKU's and MODE_SIM's are used).  Written with the GIL held. */
CORE_HIDDEN extern KeyPool pools[MODE_COUNT];
/* Per thread: the pool epoch its register bits were last derived for (0: never). */
CORE_HIDDEN extern _Thread_local uint64_t tls_epoch[MODE_COUNT]
    __attribute__((tls_model("initial-exec")));
/* MODE_SIM's register: the kernel's initial value (only key 0 open) in every thread. */
CORE_HIDDEN extern _Thread_local pkey_reg_t tls_sim_pkru __attribute__((tls_model("initial-exec")));

/* ---- The hot path (static inline: a guard entry and exit) --------------------------- */

static inline int
mode_is_pool(int mode)
{
    return mode == MODE_PKU || mode == MODE_SIM;
}

static inline pkey_reg_t
pool_rdpkru(int mode)
{
    return mode == MODE_SIM ? tls_sim_pkru : arch_reg_read();
}

static inline void
pool_wrpkru(int mode, pkey_reg_t value)
{
    if (mode == MODE_SIM) {
        tls_sim_pkru = value;
    }
    else {
        arch_reg_write(value);
    }
}

/* Set this thread's bits for number h (skipped when unchanged). */
static inline void
pool_set_bits(int mode, int h, unsigned bits)
{
    pkey_reg_t pkru = pool_rdpkru(mode);
    pkey_reg_t want = arch_rights_set(pkru, h, bits);
    if (want != pkru) {
        pool_wrpkru(mode, want);
    }
}

/* A guard entered the key that holds the slot: the LRU clock (the eviction policy's input). */
static inline void
pool_touch(KeyPool *p, KeySlot *slot)
{
    if (slot->last_use != p->tick) {
        slot->last_use = ++p->tick;
    }
}

static inline int
pool_popcount(uint32_t x)
{
    return __builtin_popcount(x);
}

static inline int
pool_lowest(uint32_t x)
{
    return __builtin_ctz(x);
}

/* ---- The unit's functions (_keypool.c) ----------------------------------------------- */

CORE_HIDDEN void pools_init(void);
/* Fork child (one thread: the forking one): the registry holds only it, under its new id. */
CORE_HIDDEN void pool_threads_fork_child(void);
/* Derive this thread's bits again after numbers changed owner (s: its guard stack, or NULL). */
CORE_HIDDEN void pool_sync(int mode, ThreadStack *s);
/* Give k (parked) a number and tag its pages with it: 0, an errno (*syscall_name: the call that
 * failed) or POOL_EXHAUSTED; raises nothing. */
CORE_HIDDEN int pool_take(KeyObject *k, int evict, const char **syscall_name);
/* Raise for a failed pool_take (once the state is consistent again). */
CORE_HIDDEN void raise_take_failed(KeyObject *k, int why, const char *syscall_name);
/* A new key of a pool mode: its slot (a number for a pinned key, else one only if no
 * eviction is needed).  0, or -1 with an exception set (the key is then unusable). */
CORE_HIDDEN int pool_key_init(KeyObject *k, int base_level);
/* The key's pages could not be untagged and are no longer bound: its number stays lost. */
CORE_HIDDEN void pool_key_leaked(KeyObject *k);
/* The key is closing (failed: some pages kept the tag): give its number back, or keep it out
 * of use for good.  Returns whether the key is quarantined (its number never freed). */
CORE_HIDDEN int pool_key_close(KeyObject *k, int failed);

/* Module functions (tests and benchmarks): _pool_stats, _pool_limit, _pool_thread_seen,
 * _pool_sync, _sim_pkru, _sim_set_pkru. */
CORE_HIDDEN PyObject *core_pool_stats(PyObject *module, PyObject *arg);
CORE_HIDDEN PyObject *core_pool_limit(PyObject *module, PyObject *args);
CORE_HIDDEN PyObject *core_pool_thread_seen(PyObject *module, PyObject *ignored);
CORE_HIDDEN PyObject *core_pool_sync(PyObject *module, PyObject *arg);
CORE_HIDDEN PyObject *core_sim_pkru(PyObject *module, PyObject *ignored);
CORE_HIDDEN PyObject *core_sim_set_pkru(PyObject *module, PyObject *arg);

#endif /* PKEYGUARD_KEYPOOL_H */
