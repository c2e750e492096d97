/*
 * Virtual keys: the pool of hardware key numbers behind the pku backend's logical keys.
 * Included by _core.c after the Key, Mapping and Binding structs (part of that translation
 * unit: everything here is static).
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
 *              calling thread) holds its number for life, a fresh one from pkey_alloc (never
 *              one a NoAccess key used: a thread may have inherited that open).  When it
 *              closes, the number is kept for later pinned keys only: other threads may have
 *              inherited its rights.
 *
 * The two classes of numbers never mix, and the pool never frees a number: a thread may still
 * have it open, and once the kernel hands it to someone else nothing could close it there.
 *
 * What makes a reused number safe: outside its own guards, a thread has every number of the
 * virtual class closed.  A number enters the pool closed in the allocating thread
 * (pkey_alloc(0, access-disabled)) and in every thread that existed before (the kernel's
 * initial PKRU); guards restore what they changed; a guard that opens a key pins it, so its
 * number cannot change owner under it.  A thread started inside an opening guard inherits
 * the number open: every change of owner bumps the pool's epoch, and a thread whose epoch is
 * behind closes every virtual-class number except what its own active guards opened, at its
 * next guard entry (pool_sync, in _core.c).  The old owner's pages are parked before the
 * number is reused, so a stale thread never reaches them, and reaches the new owner's pages
 * only until that entry.
 *
 * All of it runs with the GIL held and allocates nothing: no Python code can run in the
 * middle of a change.  Functions return 0 or an errno (-1: no number can be taken) and raise
 * nothing; the caller raises once the state is consistent again.
 */

#define POOL_NUMBERS 16
#define POOL_EXHAUSTED (-1)
#define FAULT_PKEY_PARKED (-2) /* fault table: the region's key holds no number now */

typedef struct KeyPool {
    int limit;                 /* the most numbers to hold at once (1..15) */
    KeyObject *owner[POOL_NUMBERS]; /* borrowed: the key holding each number */
    uint32_t held;             /* numbers allocated by this pool (never freed) */
    uint32_t owned;            /* held numbers with an owner */
    uint32_t pinned_class;     /* held numbers for pinned keys only (the rest: virtual) */
    uint32_t lost;             /* never used again: pages kept the tag when untagging failed */
    uint64_t epoch;            /* bumped whenever a number gets a new owner */
    uint64_t tick;             /* the LRU clock */
    unsigned long long hits, misses, evictions, retags, parks, allocs, exhausted, syncs;
} KeyPool;

static KeyPool pools[MODE_COUNT];

/* Per thread: the pool epoch its PKRU bits were last derived for (0: never). */
static _Thread_local uint64_t tls_epoch[MODE_COUNT] __attribute__((tls_model("initial-exec")));
/* MODE_SIM's PKRU: the kernel's initial value (only key 0 open) in every thread. */
static _Thread_local uint32_t tls_sim_pkru __attribute__((tls_model("initial-exec"))) =
    0x55555554u;
/* MODE_SIM's "kernel": the numbers allocated (bit h), 1..15 available. */
static uint32_t sim_allocated = 0;

static void
pools_init(void)
{
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        pools[mode].limit = POOL_NUMBERS - 1;
        pools[mode].epoch = 1; /* a new thread (epoch 0) derives its bits at its first entry */
    }
}

static inline int
mode_is_pool(int mode)
{
    return mode == MODE_PKU || mode == MODE_SIM;
}

static inline uint32_t
pool_rdpkru(int mode)
{
    return mode == MODE_SIM ? tls_sim_pkru : pkru_read();
}

static inline void
pool_wrpkru(int mode, uint32_t value)
{
    if (mode == MODE_SIM) {
        tls_sim_pkru = value;
    }
    else {
        pkru_write(value);
    }
}

/* Set this thread's bits for number h (skipped when unchanged). */
static inline void
pool_set_bits(int mode, int h, uint32_t bits)
{
    unsigned shift = 2u * (unsigned)h;
    uint32_t pkru = pool_rdpkru(mode);
    uint32_t want = (pkru & ~(3u << shift)) | (bits << shift);
    if (want != pkru) {
        pool_wrpkru(mode, want);
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

/* Tag one mapping's pages with number h and rights prot (park: PROT_NONE and h = 0).  0 or
 * an errno.  A mapping absent from this process (a raw clone child) is left alone. */
static int
pool_tag(int mode, MappingObject *m, int prot, int h)
{
    if (mapping_absent(m)) {
        return 0;
    }
    long rc = mode == MODE_SIM ? mprotect((void *)m->addr, m->len, prot)
                               : syscall(SYS_pkey_mprotect, m->addr, m->len, prot, h);
    return rc == 0 ? 0 : errno;
}

/* The rights and number a key's pages have now: its own rights and number, or parked. */
static inline int
key_page_prot(KeyObject *k, MappingObject *m)
{
    return k->hw >= 0 ? m->prot : PROT_NONE;
}

static inline int
key_page_pkey(KeyObject *k)
{
    return k->hw >= 0 ? k->hw : 0;
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
        uint32_t free_numbers = ~sim_allocated & 0xfffeu; /* 1..15 */
        if (free_numbers == 0) {
            return -ENOSPC;
        }
        int h = pool_lowest(free_numbers);
        sim_allocated |= 1u << h;
        pool_set_bits(mode, h, PKRU_AD);
        return h;
    }
    long r = syscall(SYS_pkey_alloc, 0, PKRU_AD);
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
        if (k->opening == 0 && !k->leaked && (best == NULL || k->last_use < best->last_use)) {
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
static int
pool_take(KeyObject *k, int evict, const char **syscall_name)
{
    KeyPool *p = &pools[k->mode];
    uint32_t class_mask = k->pinned ? p->pinned_class : ~p->pinned_class;
    uint32_t spare = p->held & class_mask & ~p->owned & ~p->lost;
    int h = spare ? pool_lowest(spare) : -1;
    *syscall_name = "pkey_alloc";
    if (h < 0 && pool_popcount(p->held) < p->limit) {
        int r = pool_alloc_number(k->mode);
        if (r >= 0) {
            h = r;
            p->held |= 1u << h;
            if (k->pinned) {
                p->pinned_class |= 1u << h;
            }
            p->allocs++;
        }
        else if (r != -ENOSPC) {
            return -r;
        }
    }
    if (h < 0) {
        KeyObject *victim = evict && !k->pinned ? pool_victim(p) : NULL;
        if (victim == NULL) {
            if (evict) {
                p->exhausted++;
            }
            return evict ? POOL_EXHAUSTED : ENOSPC;
        }
        h = victim->hw;
        *syscall_name = k->mode == MODE_SIM ? "mprotect" : "pkey_mprotect";
        int mixed;
        int e = key_retag(victim, -1, h, &p->parks, &mixed);
        if (e != 0) {
            if (mixed) { /* some of its pages parked, some still tagged: retire the number */
                victim->hw = -1;
                p->owner[h] = NULL;
                p->owned &= ~(1u << h);
                p->lost |= 1u << h;
            }
            return e;
        }
        victim->hw = -1;
        p->owner[h] = NULL;
        p->owned &= ~(1u << h);
        p->evictions++;
    }
    /* This thread may have the number open only through a stale inheritance: close it. */
    pool_set_bits(k->mode, h, PKRU_AD);
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
    k->hw = h;
    p->epoch++;
    return 0;
}

/* k is closing and its pages are untagged (untagged = 1) or kept the tag: let its number go,
 * closed in this thread.  It stays held, a spare of its class; a number whose pages kept the
 * tag is never used again. */
static void
pool_release(KeyObject *k, int untagged)
{
    int h = k->hw;
    if (h < 0) {
        return;
    }
    KeyPool *p = &pools[k->mode];
    uint32_t bit = 1u << h;
    p->owner[h] = NULL;
    p->owned &= ~bit;
    k->hw = -1;
    pool_set_bits(k->mode, h, PKRU_AD);
    if (!untagged) {
        p->lost |= bit;
    }
}

/* Raise for a failed pool_take (the state is consistent again). */
static void
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
    if (k->pinned) {
        msg = PyUnicode_FromFormat(
            "no hardware protection key can be taken for key %lld, created with initial "
            "rights: such a key needs a number no NoAccess key has used (a thread may have "
            "inherited that one open), and none is left: pkeyguard holds %d of at most %d "
            "(%d for NoAccess keys, %d for keys with initial rights, all in use) and the kernel "
            "has no more (x86 has 15; other code in this process holds the rest). Create keys "
            "NoAccess (the default) and open them with guards",
            k->id, held, p->limit, held - pinned_numbers, pinned_numbers);
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
    PyObject *cls = err(E_KEY_EXHAUSTED);
    PyObject *exc = PyObject_CallFunction(cls, "iO", ENOSPC, msg);
    Py_DECREF(msg);
    if (exc == NULL) {
        return;
    }
    PyObject *name = PyUnicode_FromString("pkey_alloc");
    if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(exc);
        return;
    }
    Py_DECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
}
