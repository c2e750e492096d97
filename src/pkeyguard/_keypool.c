/*
 * Virtual keys: the pool of hardware key numbers behind the pku backend's logical keys (and
 * MODE_SIM's simulated ones).  This unit owns the pool: its per-key slots (KeySlot, embedded in
 * each Key), the LRU touch, the choice of a victim (pool_victim: the eviction policy), the
 * take, release and sync, the thread registry and the counters.  The rest of the core calls the
 * interface in _keypool.h; a new eviction policy changes this file (and pool_touch there).
 *
 * x86 has 15 allocatable keys.  A PkeyGuard is a logical key; the numbers are a cache:
 *
 *   held       a logical key that holds a number has its pages tagged with it; a switch is
 *              one WRPKRU (a hit).
 *   parked     a logical key without a number has its pages PROT_NONE with key 0: no thread
 *              can reach them, whatever its PKRU says.
 *   miss       entering a ReadOnly/ReadWrite guard on a parked key takes a number: a spare,
 *              else a new one from pkey_alloc (below the pool's limit), else the one of the
 *              least recently entered virtual key that no thread has an opening guard on
 *              (that key is parked first).  Then this key's pages are tagged with it.
 *   pinned     a key created with rights other than NoAccess (pkey_alloc's rights for the
 *              calling thread) holds its number for life, one of the pinned class (never one
 *              a NoAccess key used: a thread may have inherited that open).  When it closes,
 *              the number is "retired": kept for later pinned keys only, and given to one only
 *              once no thread can hold rights to it (below).
 *
 * The two classes of numbers never mix, and the pool never frees a number: a thread may still
 * have it open, and once the kernel hands it to someone else nothing could close it there.
 *
 * What makes a reused virtual number safe: outside its own guards, a thread has every number
 * of the virtual class closed.  A number enters the pool closed in the allocating thread
 * (pkey_alloc(0, access-disabled)) and in every thread that existed before (the kernel's
 * initial PKRU); guards restore what they changed; a guard that opens a key pins it, so its
 * number cannot change owner under it.  A thread started inside an opening guard inherits
 * the number open: every change of owner bumps the pool's epoch, and a thread whose epoch is
 * behind closes every virtual-class number except what its own active guards opened, at its
 * next guard entry (pool_sync).  The old owner's pages are parked before the
 * number is reused, so a stale thread never reaches them, and reaches the new owner's pages
 * only until that entry.
 *
 * What makes a reused pinned number safe (issue 18, class 8).  A pinned key's number is open
 * outside any guard in its creator and in every thread started, directly or not, by a thread
 * that had it open; closing the key closes it in the closing thread only, and no thread can
 * write another's PKRU.  So a retired number h goes to a new pinned key only if every live
 * thread T of the process (/proc/self/task, read by the thread taking it) provably has h
 * closed (pool_pinned_reusable):
 *   (a) T has synced since h was retired: retiring bumps the epoch, and pool_sync closes
 *       every pinned number without an owner; T's epoch >= retired_at[h]; or
 *   (b) T is not h's creator (the pool keeps, per thread, the pinned numbers it created and
 *       has not closed) and T existed before h was taken: pkeyguard saw it before (its
 *       registration epoch <= taken_at[h]), or the kernel says it started earlier (its start
 *       time in /proc/self/task/T/stat, in clock ticks of CLOCK_BOOTTIME, is below the tick
 *       read before the take; the kernel stamps a thread's start after copying its PKRU).
 *       Such a thread had h closed when h was taken (by induction: every live thread had h
 *       closed then, or h was fresh from pkey_alloc), and only its own guards on the key
 *       open h again, restoring it on exit; the key cannot close while a guard is active.
 * Once proved, h stays "clean" until it is taken again: without an owner nothing opens it,
 * and a thread started later copies a PKRU that has it closed.  Anything that cannot be
 * proved (a thread pkeyguard never saw, started after the take; an unreadable /proc) keeps h
 * retired: the new key takes a fresh number, or is refused
 * (KeyExhaustedError) when none is left.  A thread registers (the registry: PoolThread, a
 * pthread key whose destructor unlinks it at thread exit, after closing pkeyguard's numbers
 * in that thread) at its first sync; a pinned key's creator at creation, or the key is
 * refused.  In a fork child the registry holds the forking thread only, under its new id.
 * Threads that end without their exit handlers running (a raw exit system call) are not
 * covered: their id could be reused for a thread the registry would misjudge.
 *
 * The cost: a closed pinned key's number waits while its creator, or a thread started while
 * it was open, lives without entering a guard (or creating a key with initial rights).  A
 * process can create any number of keys with initial rights over its life if those threads
 * sync or end; if they never do, each such closed key keeps a number for good, and at most
 * 15 (fewer: NoAccess keys' and other code's numbers count) can exist over the process's
 * life.  Threads started before the key was created never hold it up.
 *
 * All of it runs with the GIL held and allocates nothing: no Python code can run in the
 * middle of a change.  Functions return 0 or an errno (-1: no number can be taken) and raise
 * nothing; the caller raises once the state is consistent again.
 */

#include "_core.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>



KeyPool pools[MODE_COUNT];

/* Per thread: the pool epoch its PKRU bits were last derived for (0: never). */
_Thread_local uint64_t tls_epoch[MODE_COUNT] __attribute__((tls_model("initial-exec")));
/* MODE_SIM's PKRU: the kernel's initial value (only key 0 open) in every thread. */
_Thread_local pkey_reg_t tls_sim_pkru __attribute__((tls_model("initial-exec"))) =
    PKEY_REG_INIT;
/* MODE_SIM's "kernel": the numbers allocated (bit h), 1..15 available. */
static uint32_t sim_allocated = 0;

/* The threads pkeyguard has seen, for pool_pinned_reusable.  Each record is its thread's own
 * (thread-local); the registry links them under pool_threads_lock, since a thread leaves it
 * at exit without the GIL (the pthread key's destructor).  Everything else in a record is
 * read and written with the GIL held. */
typedef struct PoolThread {
    struct PoolThread *prev, *next;
    const uint64_t *epoch;        /* its tls_epoch: the epoch of each pool it last synced at */
    uint64_t since[MODE_COUNT];   /* each pool's epoch when the thread was first seen */
    uint32_t created[MODE_COUNT]; /* pinned numbers it created and has not closed itself */
    pid_t tid;
    int linked;
} PoolThread;

static _Thread_local PoolThread tls_thread __attribute__((tls_model("initial-exec")));
static PoolThread pool_threads = {&pool_threads, &pool_threads, NULL, {0}, {0}, 0, 0};
static pthread_mutex_t pool_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t pool_thread_key;
static pthread_once_t pool_thread_once = PTHREAD_ONCE_INIT;
static int pool_thread_key_errno = 0;

void
pools_init(void)
{
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        pools[mode].limit = POOL_NUMBERS - 1;
        pools[mode].epoch = 1; /* a new thread (epoch 0) derives its bits at its first entry */
    }
}

/* ---- The threads that may hold a retired pinned number open ------------------------- */

/* pthread key destructor: the thread is ending (no Python code runs in it any more, but the
 * C library may still run other exit handlers).  Close every number pkeyguard holds in this
 * thread, then leave the registry: from then on nothing proves the thread closed, and
 * nothing needs to. */
static void
pool_thread_gone(void *arg)
{
    PoolThread *t = arg;
    uint32_t held = __atomic_load_n(&pools[MODE_PKU].held, __ATOMIC_RELAXED);
    if (held != 0) { /* numbers were allocated: PKRU works here */
        pkey_reg_t pkru = arch_reg_read();
        pkey_reg_t want = arch_rights_close_all(pkru, held);
        if (want != pkru) {
            arch_reg_write(want);
        }
    }
    tls_sim_pkru = PKEY_REG_INIT;
    pthread_mutex_lock(&pool_threads_lock);
    if (t->linked) {
        t->prev->next = t->next;
        t->next->prev = t->prev;
        t->linked = 0;
    }
    pthread_mutex_unlock(&pool_threads_lock);
}

static void
pool_thread_key_make(void)
{
    pool_thread_key_errno = pthread_key_create(&pool_thread_key, pool_thread_gone);
}

/* Register this thread (once): 0 or an errno.  Allocates nothing of Python's. */
static int
pool_thread_seen(void)
{
    PoolThread *t = &tls_thread;
    if (t->linked) {
        return 0;
    }
    (void)pthread_once(&pool_thread_once, pool_thread_key_make);
    if (pool_thread_key_errno != 0) {
        return pool_thread_key_errno;
    }
    int e = pthread_setspecific(pool_thread_key, t);
    if (e != 0) {
        return e;
    }
    t->tid = (pid_t)syscall(SYS_gettid);
    t->epoch = tls_epoch;
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        if (t->since[mode] == 0) {
            t->since[mode] = pools[mode].epoch;
        }
    }
    pthread_mutex_lock(&pool_threads_lock);
    t->next = &pool_threads;
    t->prev = pool_threads.prev;
    pool_threads.prev->next = t;
    pool_threads.prev = t;
    t->linked = 1;
    pthread_mutex_unlock(&pool_threads_lock);
    return 0;
}

/* Fork child (one thread: the forking one): the registry holds only it, under its new id. */
void
pool_threads_fork_child(void)
{
    static const pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&pool_threads_lock, &unlocked, sizeof(unlocked));
    pool_threads.next = pool_threads.prev = &pool_threads;
    PoolThread *t = &tls_thread;
    if (t->linked) {
        t->tid = (pid_t)syscall(SYS_gettid);
        t->next = t->prev = &pool_threads;
        pool_threads.next = pool_threads.prev = t;
    }
}

/* Now, in the clock ticks of /proc/PID/stat's start time (CLOCK_BOOTTIME, floored); 0 if the
 * clock cannot be read (then no thread counts as started before). */
static long long
pool_clock_tick(void)
{
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0 || 1000000000L % hz != 0 || clock_gettime(CLOCK_BOOTTIME, &ts) != 0) {
        return 0;
    }
    return (long long)ts.tv_sec * hz + (long long)(ts.tv_nsec / (1000000000L / hz));
}

/* The decimal digits at p, at most max: 0 and *end past them; -1 if there is no digit or the
 * number is over max.  Not strtoull/strtol: built against glibc 2.38 or newer headers (Debian
 * sid's, where the 3.14 and 3.15 wheels are built) those become __isoc23_strtoull, and the
 * wheel would then need glibc 2.38 (manylinux_2_38) for two reads of /proc (issue 20). */
static int
pool_parse_decimal(const char *p, const char **end, unsigned long long max,
                   unsigned long long *out)
{
    unsigned long long v = 0;
    const char *q = p;
    while (*q >= '0' && *q <= '9') {
        unsigned long long digit = (unsigned long long)(*q - '0');
        if (v > (max - digit) / 10) {
            return -1;
        }
        v = v * 10 + digit;
        q++;
    }
    if (q == p) {
        return -1;
    }
    *end = q;
    *out = v;
    return 0;
}

/* Thread tid's start time (field 22 of /proc/self/task/TID/stat), or -1. */
static long long
pool_thread_start_tick(long tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/task/%ld/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    (void)close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the name (field 2) may hold spaces and parentheses */
    if (p == NULL) {
        return -1;
    }
    p++;
    for (int field = 3; field < 22; field++) {
        while (*p == ' ') {
            p++;
        }
        while (*p != '\0' && *p != ' ') {
            p++;
        }
    }
    while (*p == ' ') {
        p++;
    }
    const char *end;
    unsigned long long v;
    if (pool_parse_decimal(p, &end, (unsigned long long)LLONG_MAX, &v) != 0) {
        return -1;
    }
    return (long long)v;
}

/* Of the retired pinned numbers in candidates, those that no live thread can hold open (the
 * rule is in the header).  The calling thread has synced.  Reads /proc with the GIL held;
 * allocates nothing of Python's.  Whatever cannot be read proves nothing: 0. */
static uint32_t
pool_pinned_reusable(int mode, uint32_t candidates)
{
    KeyPool *p = &pools[mode];
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL) {
        return 0;
    }
    int failed = 0;
    pthread_mutex_lock(&pool_threads_lock);
    while (candidates) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            failed = errno != 0;
            break;
        }
        const char *end;
        unsigned long long number;
        if (pool_parse_decimal(d->d_name, &end, (unsigned long long)LONG_MAX, &number) != 0
            || *end != '\0') {
            continue;
        }
        long tid = (long)number;
        PoolThread *t = NULL;
        for (PoolThread *q = pool_threads.next; q != &pool_threads; q = q->next) {
            if (q->tid == tid) {
                t = q;
                break;
            }
        }
        long long start = -2; /* read when needed */
        uint32_t unsure = 0;
        for (uint32_t left = candidates; left; left &= left - 1) {
            int h = pool_lowest(left);
            uint32_t bit = 1u << h;
            if (t != NULL) {
                if (t->epoch[mode] >= p->retired_at[h]) {
                    continue; /* (a) synced since h was retired */
                }
                if (t->created[mode] & bit) {
                    unsure |= bit; /* h's creator, still holding it */
                    continue;
                }
                if (t->since[mode] != 0 && t->since[mode] <= p->taken_at[h]) {
                    continue; /* (b) seen before h was taken */
                }
            }
            if (start == -2) {
                start = pool_thread_start_tick(tid);
            }
            if (start < 0 || start >= p->taken_tick[h]) {
                unsure |= bit; /* may have been started by a thread that had h open */
            }
        }
        candidates &= ~unsure;
    }
    pthread_mutex_unlock(&pool_threads_lock);
    (void)closedir(dir);
    return failed ? 0 : candidates;
}

/* The pool's invariants (checked by assert: the sanitizer build keeps them, see setup.py):
 * owned, pinned, lost and clean numbers are held ones; each owned number's owner holds it. */
static void
pool_check(const KeyPool *p)
{
#ifndef NDEBUG
    assert((p->owned & ~p->held) == 0);
    assert((p->pinned_class & ~p->held) == 0);
    assert((p->lost & ~p->held) == 0);
    assert((p->held & ~POOL_ALLOCATABLE) == 0);
    for (int h = 0; h < POOL_NUMBERS; h++) {
        if (p->owned & (1u << h)) {
            assert(p->owner[h] != NULL && p->owner[h]->slot.hw == h);
        }
        else {
            assert(p->owner[h] == NULL);
        }
    }
#else
    (void)p;
#endif
}

/* Tag one mapping's pages with number h and rights prot (park: PROT_NONE and h = 0).  0 or
 * an errno.  A mapping absent from this process (a raw clone child) is left alone. */
static int
pool_tag(int mode, MappingObject *m, int prot, int h)
{
    if (mapping_absent(m)) {
        return 0;
    }
    long rc = mode == MODE_SIM ? mprotect((void *)m->addr, m->len, prot)
                               : sys_pkey_mprotect((void *)m->addr, m->len, prot, h);
    return rc == 0 ? 0 : errno;
}

/* Tag every region of k with number h (h < 0: park them).  On a failure, regions already
 * done go back to number back (back < 0: parked) and the errno is returned; if putting one
 * back fails too (the kernel is out of VMAs, say), *mixed is set: some pages now carry h and
 * some back, and the caller must never give either number to another key. */
static int
key_retag(KeyObject *k, int h, int back, unsigned long long *count, int *mixed)
{
    *mixed = 0;
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        MappingObject *m = k->bindings[i]->mapping;
        int e = pool_tag(k->mode, m, h >= 0 ? m->prot : PROT_NONE, h >= 0 ? h : 0);
        if (e != 0) {
            for (Py_ssize_t j = 0; j < i; j++) {
                MappingObject *q = k->bindings[j]->mapping;
                if (pool_tag(k->mode, q, back >= 0 ? q->prot : PROT_NONE,
                             back >= 0 ? back : 0) != 0) {
                    *mixed = 1;
                    q->flags |= MAP_F_UNKNOWN; /* it kept h, while its key's books say back */
                }
            }
            return e;
        }
    }
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        MappingObject *m = k->bindings[i]->mapping;
        fault_table_set_pkey(m->addr, h >= 0 ? h : FAULT_PKEY_PARKED);
        if (!mapping_absent(m)) {
            (*count)++;
        }
    }
    return 0;
}

/* A new number from the kernel (closed in this thread), or -errno. */
static int
pool_alloc_number(int mode)
{
    if (mode == MODE_SIM) {
        uint32_t free_numbers = ~sim_allocated & POOL_ALLOCATABLE;
        if (free_numbers == 0) {
            return -ENOSPC;
        }
        int h = pool_lowest(free_numbers);
        sim_allocated |= 1u << h;
        pool_set_bits(mode, h, PKEY_CLOSED);
        return h;
    }
    long r = sys_pkey_alloc(0, PKEY_ALLOC_NO_ACCESS);
    return r < 0 ? -errno : (int)r;
}

/* The virtual key to evict: least recently entered, no opening guard on any thread. */
static KeyObject *
pool_victim(KeyPool *p)
{
    KeyObject *best = NULL;
    uint32_t candidates = p->owned & ~p->pinned_class;
    while (candidates) {
        int h = pool_lowest(candidates);
        candidates &= candidates - 1;
        KeyObject *k = p->owner[h];
        if (k->slot.opening == 0 && !k->slot.leaked && (best == NULL || k->slot.last_use < best->slot.last_use)) {
            best = k;
        }
    }
    return best;
}

/* Give k (holding nothing) a number and tag its pages with it, closed in this thread.
 * evict: 0 takes only a number that needs no eviction (a pinned key never evicts: a virtual
 * key's number may be open in a stale thread).  Returns 0, an errno (what failed is in
 * *syscall_name), or POOL_EXHAUSTED; on failure k is still parked, and a victim already
 * parked stays parked (its number is then a spare). */
int
pool_take(KeyObject *k, int evict, const char **syscall_name)
{
    KeyPool *p = &pools[k->mode];
    uint32_t class_mask = k->slot.pinned ? p->pinned_class : ~p->pinned_class;
    uint32_t spare = p->held & class_mask & ~p->owned & ~p->lost;
    long long tick = 0;
    if (k->slot.pinned) {
        /* Read before the decision: a thread stamped earlier existed when it was made. */
        tick = pool_clock_tick();
        if (spare && !(spare & p->clean)) {
            /* Once proved closed in every live thread, a number without an owner stays so
             * (nothing opens it, and new threads copy a closed one): prove it once. */
            p->clean |= pool_pinned_reusable(k->mode, spare);
            if (!(spare & p->clean)) {
                p->pinned_waits++;
            }
        }
        spare &= p->clean;
    }
    int h = spare ? pool_lowest(spare) : -1;
    *syscall_name = "pkey_alloc";
    if (h < 0 && pool_popcount(p->held) < p->limit) {
        int r = pool_alloc_number(k->mode);
        if (r >= 0) {
            h = r;
            p->held |= 1u << h;
            if (k->slot.pinned) {
                p->pinned_class |= 1u << h;
            }
            p->allocs++;
        }
        else if (r != -ENOSPC) {
            return -r;
        }
    }
    if (h < 0) {
        KeyObject *victim = evict && !k->slot.pinned ? pool_victim(p) : NULL;
        if (victim == NULL) {
            if (evict) {
                p->exhausted++;
            }
            return evict ? POOL_EXHAUSTED : ENOSPC;
        }
        h = victim->slot.hw;
        *syscall_name = k->mode == MODE_SIM ? "mprotect" : "pkey_mprotect";
        int mixed;
        int e = key_retag(victim, -1, h, &p->parks, &mixed);
        if (e != 0) {
            if (mixed) { /* some of its pages parked, some still tagged: retire the number */
                victim->slot.hw = -1;
                p->owner[h] = NULL;
                p->owned &= ~(1u << h);
                p->lost |= 1u << h;
            }
            return e;
        }
        victim->slot.hw = -1;
        p->owner[h] = NULL;
        p->owned &= ~(1u << h);
        p->evictions++;
    }
    /* This thread may have the number open only through a stale inheritance: close it. */
    pool_set_bits(k->mode, h, PKEY_CLOSED);
    *syscall_name = k->mode == MODE_SIM ? "mprotect" : "pkey_mprotect";
    int mixed;
    int e = key_retag(k, h, -1, &p->retags, &mixed);
    if (e != 0) {
        if (mixed) { /* some of k's pages kept h while k stays parked: never reuse it */
            p->lost |= 1u << h;
        }
        return e; /* h stays a spare */
    }
    p->owner[h] = k;
    p->owned |= 1u << h;
    k->slot.hw = h;
    if (k->slot.pinned) {
        p->taken_at[h] = p->epoch;
        p->taken_tick[h] = tick;
        p->clean &= ~(1u << h);
    }
    p->epoch++;
    pool_check(p);
    return 0;
}

/* k is closing and its pages are untagged (untagged = 1) or kept the tag: let its number go,
 * closed in this thread.  It stays held, a spare of its class; a number whose pages kept the
 * tag is never used again.  A pinned number is retired: the epoch moves, so that every thread
 * closes it at its next sync, and it waits until pool_pinned_reusable proves it closed. */
static void
pool_release(KeyObject *k, int untagged)
{
    int h = k->slot.hw;
    if (h < 0) {
        return;
    }
    KeyPool *p = &pools[k->mode];
    uint32_t bit = 1u << h;
    p->owner[h] = NULL;
    p->owned &= ~bit;
    k->slot.hw = -1;
    pool_set_bits(k->mode, h, PKEY_CLOSED);
    tls_thread.created[k->mode] &= ~bit;
    if (p->pinned_class & bit) {
        p->epoch++;
        p->retired_at[h] = p->epoch;
        p->clean &= ~bit;
    }
    if (!untagged) {
        p->lost |= bit;
    }
    pool_check(p);
}

/* Raise for a failed pool_take (the state is consistent again). */
void
raise_take_failed(KeyObject *k, int why, const char *syscall_name)
{
    if (why != POOL_EXHAUSTED) {
        raise_errno(why, syscall_name);
        return;
    }
    KeyPool *p = &pools[k->mode];
    int held = pool_popcount(p->held);
    int pinned_numbers = pool_popcount(p->pinned_class);
    PyObject *msg;
    if (k->slot.pinned) {
        int waiting = pool_popcount(p->held & p->pinned_class & ~p->owned & ~p->lost);
        msg = PyUnicode_FromFormat(
            "no hardware protection key can be taken for key %lld, created with initial "
            "rights: such a key needs a number no NoAccess key has used (a thread may have "
            "inherited that one open), and none is left: pkeyguard holds %d of at most %d "
            "(%d for NoAccess keys, %d for keys with initial rights: %d in use, %d of closed "
            "keys that wait until every thread that may still hold their rights, the thread "
            "that created them or one started while they were open, has entered a guard or "
            "ended) and the kernel has no more (x86 has 15; other code in this process holds "
            "the rest). Create keys NoAccess (the default) and open them with guards",
            k->id, held, p->limit, held - pinned_numbers, pinned_numbers,
            pool_popcount(p->owned & p->pinned_class), waiting);
    }
    else {
        int usable = pool_popcount(p->held & ~p->pinned_class & ~p->lost);
        msg = PyUnicode_FromFormat(
            "no hardware protection key can be taken for key %lld: %s%d that NoAccess keys can "
            "use %s held by keys that cannot give them up now (a ReadOnly or ReadWrite guard on "
            "them is active on some thread, or pages they tagged could not be untagged), and "
            "no more can be allocated: pkeyguard holds %d of at most %d (%d kept for keys "
            "created with initial rights, for good: other threads may have inherited their "
            "rights) and the kernel has no more (x86 has 15; other code in this process holds "
            "the rest). %s",
            k->id, usable == 1 ? "the " : "all ", usable, usable == 1 ? "is" : "are", held,
            p->limit, pinned_numbers,
            usable > 0 ? "Leave a guard first"
                       : "Create keys NoAccess (the default) and open them with guards");
    }
    if (msg == NULL) {
        return;
    }
    (void)raise_syscall_error(E_KEY_EXHAUSTED, ENOSPC, msg, "pkey_alloc");
    Py_DECREF(msg);
}

/* ---- Sync, key life, module functions --------------------------------------------- */

/* This thread's bits for the numbers of virtual keys, derived again after numbers changed
 * owner since it last looked (or in a new thread, which may have inherited numbers open):
 * closed, except what its own active guards opened (the innermost guard on each key).  Every
 * retired pinned number is closed too (see pool_pinned_reusable); the numbers of open pinned
 * keys keep their bits.  s may be NULL (no guards). */
void
pool_sync(int mode, ThreadStack *s)
{
    KeyPool *p = &pools[mode];
    (void)pool_thread_seen(); /* unregistered (no memory): its closing just proves nothing */
    pkey_reg_t pkru = pool_rdpkru(mode);
    uint32_t virtual_numbers = p->held & ~p->pinned_class;
    uint32_t closing = p->held & ~(p->pinned_class & p->owned);
    pkey_reg_t want = arch_rights_close_all(pkru, closing);
    /* A number's bits come from this thread's innermost guard on its owner that switched
     * that number (a NoAccess guard entered while its key held another number does not
     * count): found through the owner's guards of this thread, not the whole stack. */
    for (uint32_t left = virtual_numbers & p->owned; left; left &= left - 1) {
        int h = pool_lowest(left);
        GuardObject *r = s != NULL ? key_thread_root(p->owner[h], s) : NULL;
        for (GuardObject *g = r != NULL ? r->innermost : NULL; g != NULL; g = g->same_outer) {
            walk_steps++;
            if (g->hw == h) {
                want = arch_rights_set(want, h, RIGHTS[g->level].bits);
                break;
            }
        }
    }
    if (want != pkru) {
        pool_wrpkru(mode, want);
    }
    tls_thread.created[mode] &= p->owned;
    tls_epoch[mode] = p->epoch;
    p->syncs++;
    pool_check(p);
}

/* A new key of a pool mode (Key_new): a key with initial rights holds a number of its class for
 * life; a NoAccess key takes one only if it needs no eviction, and starts parked otherwise. */
int
pool_key_init(KeyObject *k, int base_level)
{
    int mode = k->mode;
    k->slot.pinned = rights_reads(base_level);
    if (k->slot.pinned) {
        /* The creator holds the number open: the pool must know this thread (or the number
         * could never be proved closed), and it closes every retired number before one can be
         * reused (pool_pinned_reusable). */
        int seen = pool_thread_seen();
        if (seen != 0) {
            raise_errno(seen, "pthread_setspecific");
            return -1;
        }
        if (tls_epoch[mode] != pools[mode].epoch) {
            pool_sync(mode, tls_stack);
        }
    }
    const char *syscall_name;
    int e = pool_take(k, k->slot.pinned, &syscall_name);
    if (e != 0 && (k->slot.pinned || e != ENOSPC)) {
        raise_take_failed(k, e, syscall_name);
        return -1;
    }
    if (k->slot.pinned) {
        pool_set_bits(mode, k->slot.hw, RIGHTS[base_level].bits); /* the key's initial rights */
        tls_thread.created[mode] |= 1u << k->slot.hw;
    }
    k->slot.last_use = ++pools[mode].tick;
    return 0;
}

void
pool_key_leaked(KeyObject *k)
{
    if (k->slot.hw >= 0) {
        k->slot.leaked = 1;
    }
}

int
pool_key_close(KeyObject *k, int failed)
{
    /* The number goes back (closed in this thread) only if every page lost the tag. */
    int quarantined = (failed || k->slot.leaked) && k->slot.hw >= 0;
    pool_release(k, !failed && !k->slot.leaked);
    return quarantined;
}

static int
pool_mode_arg(PyObject *arg, int *mode)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v != MODE_PKU && v != MODE_SIM) {
        PyErr_Format(PyExc_ValueError, "mode %ld has no key pool (MODE_PKU or MODE_SIM)", v);
        return -1;
    }
    *mode = (int)v;
    return 0;
}

/* _pool_stats(mode): the pool's gauges and counters. */
PyObject *
core_pool_stats(PyObject *Py_UNUSED(m), PyObject *arg)
{
    int mode;
    if (pool_mode_arg(arg, &mode) < 0) {
        return NULL;
    }
    KeyPool *p = &pools[mode];
    Py_ssize_t logical = 0, parked = 0, opening = 0;
    for (KeyObject *k = live_keys.live_next; k != &live_keys; k = k->live_next) {
        if (k->mode == mode) {
            logical++;
            parked += k->slot.hw < 0;
            opening += k->slot.opening > 0;
        }
    }
    uint32_t pinned_free = p->held & p->pinned_class & ~p->owned;
    return Py_BuildValue(
        "{si si si si si si sn sn sn sK sK sK sK sK sK sK sK sK sK}", "limit", p->limit, "held",
        pool_popcount(p->held), "pinned", pool_popcount(p->owned & p->pinned_class),
        "quarantined", pool_popcount(pinned_free | p->lost), "owned", pool_popcount(p->owned),
        "spare", pool_popcount(p->held & ~p->owned & ~p->pinned_class & ~p->lost), "logical",
        logical, "parked", parked, "opening", opening, "switches",
        p->hits + p->misses + p->exhausted, "hits", p->hits, "misses", p->misses, "evictions",
        p->evictions, "retags", p->retags, "parks", p->parks, "allocs", p->allocs, "exhausted",
        p->exhausted, "syncs", p->syncs, "pinned_waits", p->pinned_waits);
}

/* _pool_limit(mode, n): the most numbers the pool may hold from now on; returns the old. */
PyObject *
core_pool_limit(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *mode_obj;
    int n, mode;
    if (!PyArg_ParseTuple(args, "Oi:_pool_limit", &mode_obj, &n) ||
        pool_mode_arg(mode_obj, &mode) < 0) {
        return NULL;
    }
    if (n < 1 || n > POOL_NUMBERS - 1) {
        return PyErr_Format(PyExc_ValueError, "a pool holds 1..%d numbers, not %d",
                            POOL_NUMBERS - 1, n);
    }
    int old = pools[mode].limit;
    pools[mode].limit = n;
    return PyLong_FromLong(old);
}

/* _pool_thread_seen(): register this thread with the pools now, as its first guard entry
 * would (tests: a thread seen before a key is made does not hold that key's number up). */
PyObject *
core_pool_thread_seen(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int e = pool_thread_seen();
    if (e != 0) {
        raise_errno(e, "pthread_setspecific");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _pool_sync(mode): what a guard entry does first on this thread: register it and derive its
 * bits again (tests: a helper thread that never enters a guard stops holding up the numbers
 * of closed keys with initial rights). */
PyObject *
core_pool_sync(PyObject *Py_UNUSED(m), PyObject *arg)
{
    int mode;
    if (pool_mode_arg(arg, &mode) < 0) {
        return NULL;
    }
    if (mode == MODE_PKU && require_pku() < 0) {
        return NULL;
    }
    pool_sync(mode, tls_stack);
    Py_RETURN_NONE;
}

PyObject *
core_sim_pkru(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(tls_sim_pkru);
}

/* _sim_set_pkru(value): set this thread's simulated PKRU (tests: what a thread started
 * inside a guard inherits on real hardware). */
PyObject *
core_sim_set_pkru(PyObject *Py_UNUSED(m), PyObject *arg)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    tls_sim_pkru = (pkey_reg_t)v;
    Py_RETURN_NONE;
}
