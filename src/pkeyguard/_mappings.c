/*
 * pkeyguard._core, mappings and their backings: the Mapping type (RegionGuard is its Python
 * subclass), its backings (anonymous private pages or memfd_secret, guard pages, mlock,
 * MADV_DONTDUMP/WIPEONFORK, the canary), wiping (never opening a secret to another thread),
 * held ranges (a released range kept reserved while a buffer export lives), interpreter exit
 * and the fork child handler.
 *
 * Ownership: a Mapping owns page-aligned memory (mmap); unmapped when closed or collected,
 * wiped first when secure.  While bound, the Mapping and its Binding hold each other, so a
 * Mapping is never unmapped while tagged; close() detaches its fields before the system calls,
 * so closing twice is harmless.  A fork child never sees a parent's secret bytes: private pages
 * are WIPEONFORK, secret memory DONTFORK with its hole refilled by fork_child().
 * Every refusal that protects memory is checked in the same C call that makes the change,
 * with the GIL held and before anything can run Python code: allocate, then check, then change.
 */
#include "_core.h"

/* ------------------------------------------------------------------------------------ */
/* Mapping                                                                              */

MappingObject wipe_list = {.wipe_prev = &wipe_list, .wipe_next = &wipe_list};

static void
wipe_register(MappingObject *m)
{
    m->wipe_next = &wipe_list;
    m->wipe_prev = wipe_list.wipe_prev;
    wipe_list.wipe_prev->wipe_next = m;
    wipe_list.wipe_prev = m;
}

static void
wipe_unregister(MappingObject *m)
{
    if (m->wipe_next != NULL) {
        m->wipe_prev->wipe_next = m->wipe_next;
        m->wipe_next->wipe_prev = m->wipe_prev;
        m->wipe_next = m->wipe_prev = NULL;
    }
}

/* Fork.  A secure region's bytes never reach a fork child.  Private anonymous pages are
 * MADV_WIPEONFORK: the child gets zero pages at the same address.  memfd_secret pages must be
 * MAP_SHARED, where the kernel refuses WIPEONFORK, and a shared copy would let the child read
 * the parent's secret and zero it (the parent's close() would then report a false canary
 * overflow): they are MADV_DONTFORK, and fork_child() fills the child's hole with zero pages
 * before anything else in the child runs, so the core's bookkeeping (release, re-tagging,
 * the mprotect backend's switches) stays true in both processes.  fork_count tells a mapping a
 * child inherited from one it made itself; a pid alone cannot (pids are reused, and a pid
 * namespace counts from 1 again). */
volatile unsigned long fork_count = 0;

/* Whether this process has none of the mapping's pages at its address: the fork handler could
 * not fill the hole (MAP_F_LOST), or the process is a child made without fork handlers (a raw
 * clone(2): the pid changed but fork_count did not), where DONTFORK left a hole that anything
 * may have been mapped into since.  The address is not ours then: never touch it. */
int
mapping_absent(MappingObject *m)
{
    if (m->flags & MAP_F_LOST) {
        return 1;
    }
    if (mapping_traits(m)->shared && m->forks == fork_count && m->pid != getpid()) {
        m->flags |= MAP_F_LOST;
        return 1;
    }
    return 0;
}

static void held_fork_child(void);

const char secret_unavailable_msg[] =
    "this secret memory was mapped before the process forked: a fork child never gets a "
    "parent's secret bytes (it has zero pages there), so it cannot be revealed, read or "
    "written here; make or load the secret again in the child (closing it works)";

/* Fork child: the zero pages of an inherited secure mapping are closed (PROT_NONE, the pku
 * number kept), and its own rights become PROT_NONE, so every later switch (a guard's exit, a
 * key's level on the mprotect backend) keeps them closed.  A memoryview exported before the
 * fork then faults in the child instead of reading zeros as if they were the secret (an HMAC
 * under an all-zero key).  If the mprotect fails the pages keep their rights: zeros, as before.
 * Pages the forking thread holds open for writing (a Secret's fill in progress: its reader or
 * writer may go on writing into the buffer in the child before the fill sees the fork and
 * raises) stay writable zero pages: what a write guard's view reads there is only what the
 * child wrote itself. */
static void
mapping_close_inherited(MappingObject *m)
{
    if (fork_child_writing(m)) {
        return;
    }
    BindingObject *b = m->binding;
    if (page_plan_apply(m, page_plan(b != NULL ? b->key : NULL, PROT_NONE)) == 0) {
        m->prot = PROT_NONE;
    }
}

static void
mapping_fill_hole(MappingObject *m)
{
    uintptr_t base = m->base != 0 ? m->base : m->releasing;
    void *p = mmap((void *)base, m->total, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)base) {
        if (p != MAP_FAILED) { /* a kernel before 4.17 took the address as a hint */
            (void)munmap(p, m->total);
        }
        m->flags |= MAP_F_LOST;
        return;
    }
    (void)madvise(p, m->total, MADV_DONTDUMP);
    (void)madvise(p, m->total, MADV_DONTFORK);
    if (m->base == 0) { /* released but for the hook: zeros it may read (mapping_show_zeros) */
        (void)mprotect((void *)m->addr, m->len, PROT_READ);
        return;
    }
    BindingObject *b = m->binding;
    KeyObject *k = b != NULL ? b->key : NULL;
    if (fork_child_writing(m)) { /* its rights and key, as in mapping_close_inherited */
        (void)page_plan_apply(m, page_plan(k, m->prot));
        return;
    }
    PagePlan closed = page_plan(k, PROT_NONE);
    if (closed.pkey >= 0) { /* closed, with the key's number (mapped PROT_NONE above) */
        (void)page_plan_apply(m, closed);
    }
    m->prot = PROT_NONE; /* mapped PROT_NONE above */
}

/* The backing's fork step, in the child (system calls only). */
static void
backing_fork_child(MappingObject *m)
{
    switch (mapping_backing(m)) {
    case BACKING_SECRETMEM: /* DONTFORK: a hole here, filled with closed zero pages */
        if (m->base != 0 || m->releasing != 0) {
            mapping_fill_hole(m);
        }
        return;
    case BACKING_ANON: /* WIPEONFORK zero pages (or a copy, on an old kernel): closed */
        if (m->base != 0) {
            mapping_close_inherited(m);
        }
        return;
    }
}

/* pthread_atfork child handler: only system calls, and the wipe list is stable (it changes
 * with the GIL held, and fork() runs with the GIL held).  Every inherited secure mapping is
 * closed (see mapping_close_inherited); secret memory holes are filled with closed zero pages
 * first. */
void
fork_child(void)
{
    fork_count++;
    pool_threads_fork_child();
    fork_child_expire_secure_views();
    held_fork_child();
    for (MappingObject *m = wipe_list.wipe_next; m != &wipe_list; m = m->wipe_next) {
        if (m->flags & MAP_F_LOST) {
            continue;
        }
        backing_fork_child(m);
    }
}

static int
mapping_check_open(MappingObject *m)
{
    if (m->base == 0) {
        PyErr_Format(err(E_REGION), "%R is closed", (PyObject *)m);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Wiping: a secure mapping's bytes are destroyed before its pages go, and never opened   */
/*
 * Zeroing a page needs a thread that can write it, and on the mprotect backend (and for a
 * parked key, or pages whose own rights are closed) no rights can be given to one thread
 * only: opening the pages to zero them would open the secret to every thread until the
 * zeroing reaches it.  So a secret is never opened to be wiped:
 *
 *   pku, its key holds a number   the pages keep their number (their rights are raised to
 *                                 read-write only where no other thread can have the number
 *                                 open), this thread's PKRU alone opens it, the canary is
 *                                 checked and every page in memory is zeroed in place;
 *   pages every thread can write  (own rights read-write and untagged, or the mprotect
 *                                 backend's current level) zeroed in place: nothing changes;
 *   otherwise                     never read: the canary is read through /proc/self/mem
 *                                 (private pages; the kernel reads them for us, whatever their
 *                                 rights) or not at all (secret memory: out of the kernel's
 *                                 direct map, nothing can read it without opening it), and the
 *                                 pages are discarded: munmap (or, where they must stay mapped,
 *                                 MADV_DONTNEED for private pages, a fresh anonymous mapping in
 *                                 place of secret memory).  The kernel zeroes secret memory
 *                                 pages when it frees them; private pages are cleared before
 *                                 the kernel hands them to anyone (at once with init_on_free=1).
 *
 * Only pages in memory are touched (mincore), so wiping costs what was touched, never the size:
 * zeroing a never-touched page would first allocate it.  Nothing here allocates or calls Python
 * code; failures are returned as an errno and raised by the caller once it is done.
 */

/* The page rights and pku number (-1: key 0, or not pku) the mapping's pages have now, from
 * the bookkeeping; *raisable: whether their rights may be raised to read-write for a moment
 * without opening them to another thread (no other thread can have the number open). */
static void
mapping_pages_now(MappingObject *m, int *prot, int *pkey, int *raisable)
{
    BindingObject *b = m->binding;
    KeyObject *k = b != NULL ? b->key : NULL;
    PagePlan d = page_plan(k, m->prot);
    *prot = (int)d.prot;
    *pkey = -1;
    *raisable = 0;
    if (d.pkey > 0) { /* a pku key holding a number (0: parked, key 0) */
        *pkey = (int)d.pkey;
        /* an opening guard (any thread) or a key made with rights (its creator, and
         * threads it started) may have the number open */
        *raisable = k->slot.opening == 0 && !k->slot.pinned;
    }
}

/* Zero the pages of [addr, addr + len) that are in memory (a page never touched reads as
 * zeros already, and zeroing it would allocate it).  The caller can write them all. */
static void
zero_resident_pages(uintptr_t addr, size_t len)
{
    unsigned char vec[4096];
    size_t page = (size_t)page_size;
    for (size_t off = 0; off < len; off += sizeof(vec) * page) {
        size_t n = len - off < sizeof(vec) * page ? len - off : sizeof(vec) * page;
        if (mincore((void *)(addr + off), n, vec) != 0) {
            wipe_bytes((void *)(addr + off), n); /* cannot tell: all of it */
            continue;
        }
        for (size_t i = 0; i < n / page; i++) {
            if (vec[i] & 1) {
                wipe_bytes((void *)(addr + off + i * page), page);
            }
        }
    }
}

/* Compare the canary with what is after the value (at p), remember a mismatch, forget it. */
static void
canary_compare(MappingObject *m, const void *p)
{
    if (memcmp(p, m->canary, (size_t)m->canary_len) != 0) {
        m->flags |= MAP_F_CANARY_BAD;
    }
}

/* The canary of private pages this thread cannot read, read by the kernel (/proc/self/mem
 * ignores page rights and keys): nothing is opened.  Unchecked if that fails. */
static void
canary_check_by_kernel(MappingObject *m)
{
    unsigned char seen[CANARY_MAX];
    int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    ssize_t got = pread(fd, seen, (size_t)m->canary_len, (off_t)(m->addr + m->size));
    (void)close(fd);
    if (got == (ssize_t)m->canary_len) {
        canary_compare(m, seen);
    }
}

/* Discard the pages in place: the range stays mapped with rights prot and number pkey (-1:
 * key 0), and reads as zeros.  0 or an errno (*what: the call). */
static int
mapping_discard(MappingObject *m, int prot, int pkey, const char **what)
{
    switch (mapping_backing(m)) { /* the backing's wipe step */
    case BACKING_ANON:
        /* Private pages: dropped (locked ones must be unlocked first); if the kernel refuses,
         * replaced like secret memory below. */
        if (!(m->flags & MAP_F_LOCKED) ||
            syscall(SYS_munlock, (void *)m->addr, m->len) == 0) {
            m->flags &= ~MAP_F_LOCKED;
            if (madvise((void *)m->addr, m->len, MADV_DONTNEED) == 0) {
                return 0;
            }
        }
        break;
    case BACKING_SECRETMEM:
        /* Secret memory cannot be discarded while mapped (no MADV_DONTNEED, no hole punch):
         * replaced below, and the kernel zeroes the pages it frees. */
        break;
    }
    /* A fresh private mapping replaces the pages. */
    void *p = mmap((void *)m->addr, m->len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        *what = "mmap";
        return errno;
    }
    m->flags &= ~MAP_F_LOCKED;
    (void)madvise(p, m->len, MADV_DONTDUMP);
    if (mapping_traits(m)->shared) {
        (void)madvise(p, m->len, MADV_DONTFORK); /* still a hole in a fork child */
    }
    if (pkey >= 0 && sys_pkey_mprotect((void *)m->addr, m->len, prot, pkey) != 0) {
        *what = "pkey_mprotect";
        return errno;
    }
    return 0;
}

/* Destroy the bytes of a secure mapping whose pages are in their current state (bound or not)
 * and check its canary, never opening a page to another thread (see above).  in_place: the
 * pages stay mapped with their rights and number, reading as zeros (interpreter exit, a guard
 * still active); else they are about to be unmapped.  Sets MAP_F_WIPED (and MAP_F_CANARY_BAD).
 * 0 or an errno (*what: the call); raises nothing. */
int
mapping_scrub(MappingObject *m, int in_place, const char **what)
{
    if ((m->flags & (MAP_F_WIPE | MAP_F_WIPED)) != MAP_F_WIPE || mapping_absent(m)) {
        return 0;
    }
    /* A fork child has zero pages here (or, on a kernel without WIPEONFORK, an intact copy):
     * no canary to check either way. */
    int check = m->canary_len > 0 && !mapping_inherited(m);
    int prot, pkey, raisable;
    mapping_pages_now(m, &prot, &pkey, &raisable);
    int known = !(m->flags & (MAP_F_UNKNOWN | MAP_F_LAGGING)); /* else: rights not trusted */
    const int rw = PROT_READ | PROT_WRITE;
    int e = 0;
    m->flags |= MAP_F_WIPED; /* from here on the bytes are gone, or closed and going */
    if (known && pkey >= 0 && ((prot & rw) == rw || raisable)) {
        /* pku: this thread alone */
        if ((prot & rw) != rw &&
            sys_pkey_mprotect((void *)m->addr, m->len, prot | rw, pkey) != 0) {
            *what = "pkey_mprotect";
            e = errno;
            goto closed;
        }
        pkey_reg_t pkru = arch_reg_read();
        arch_reg_write(arch_rights_set(pkru, pkey, RIGHTS[LEVEL_WRITE].bits));
        if (check) {
            canary_compare(m, (const void *)(m->addr + m->size));
        }
        zero_resident_pages(m->addr, m->len);
        arch_reg_write(pkru);
        wipe_bytes(m->canary, sizeof(m->canary));
        if ((prot & rw) != rw &&
            sys_pkey_mprotect((void *)m->addr, m->len, prot, pkey) != 0) {
            *what = "pkey_mprotect"; /* zeros, open to this key's number only */
            return errno;
        }
        return 0;
    }
closed:
    if (check && known && pkey < 0 && (prot & PROT_READ)) {
        canary_compare(m, (const void *)(m->addr + m->size)); /* every thread can read it */
    }
    else if (check && mapping_traits(m)->kernel_reads) {
        canary_check_by_kernel(m);
    }
    wipe_bytes(m->canary, sizeof(m->canary));
    if (known && pkey < 0 && (prot & rw) == rw) {
        zero_resident_pages(m->addr, m->len); /* every thread can write it: nothing opens */
        return e;
    }
    if (!in_place) {
        return e; /* munmap discards them */
    }
    const char *w = NULL;
    int d = mapping_discard(m, prot, pkey, &w);
    if (d != 0 && e == 0) {
        *what = w;
        e = d;
    }
    return e;
}

/* For the test hook: the pages of a wiped mapping about to be unmapped read as zeros and can
 * be read by this thread (by every thread: key 0; they hold nothing). */
static int
mapping_show_zeros(MappingObject *m, const char **what)
{
    int e = mapping_discard(m, PROT_READ, -1, what);
    if (e != 0 || mapping_traits(m)->shared) {
        return e; /* a fresh mapping, readable and untagged */
    }
    /* decided by the mapping's own tag, not the process's backend */
    PagePlan d = {PROT_READ, (m->flags & MAP_F_PKU_TAGGED) ? 0 : -1};
    if (page_plan_apply(m, d) != 0) {
        *what = page_plan_syscall(d);
        return errno;
    }
    m->flags &= ~MAP_F_PKU_TAGGED;
    return 0;
}

/* Held ranges.  A released mapping's address range is never handed back to the kernel while
 * a buffer export of one of its views (a memoryview, a slice of one) is alive: the next mmap
 * could land there, and the stale memoryview would then read or write another region's bytes
 * (another Secret's, inside its reveal()).  Such a range is kept reserved with its pages
 * dropped (a fresh PROT_NONE anonymous mapping over it, which also frees secret memory): the
 * memoryview faults, as the library says, and nothing else can be mapped there.  The last
 * export's release unmaps it.  A range whose munmap failed is kept the same way (closed, its
 * bytes discarded) and retried at every later release, instead of being leaked for good.
 * The records are plain memory (a mapping may go while its range stays), changed with the GIL
 * held; nothing here allocates Python objects or runs Python code. */
typedef struct HeldRange {
    uintptr_t base;
    size_t total;
    MappingObject *owner;   /* borrowed: the mapping while it lives (its exports), or NULL */
    int dontfork;           /* may be a hole in a fork child (secret memory left in place) */
    struct HeldRange *next;
} HeldRange;

static HeldRange *held_ranges = NULL;

/* Keep [base, base + total) reserved for m.  The pages must already hold no secret bytes (or
 * be about to be dropped by the caller).  If no record can be made the range stays reserved
 * for good: leaked, never reused. */
static void
held_add(MappingObject *m, uintptr_t base, int dontfork)
{
    HeldRange *h = PyMem_RawMalloc(sizeof(HeldRange));
    if (h == NULL) {
        return;
    }
    h->base = base;
    h->total = m->total;
    h->owner = m;
    h->dontfork = dontfork;
    h->next = held_ranges;
    held_ranges = h;
    m->held = h;
}

/* Unmap every held range nobody can reach any more (no live export); keep the others. */
void
held_sweep(void)
{
    HeldRange **link = &held_ranges;
    while (*link != NULL) {
        HeldRange *h = *link;
        if ((h->owner == NULL || h->owner->exports <= 0) &&
            munmap((void *)h->base, h->total) == 0) {
            if (h->owner != NULL) {
                h->owner->held = NULL;
            }
            *link = h->next;
            PyMem_RawFree(h);
            continue;
        }
        link = &h->next;
    }
}

/* Fork child (system calls only): a held range that may be a hole here (secret memory is
 * DONTFORK) is filled with a closed mapping, so the child's sweep unmaps its own pages; if it
 * cannot be, the address is not the child's: forget the range. */
static void
held_fork_child(void)
{
    HeldRange **link = &held_ranges;
    while (*link != NULL) {
        HeldRange *h = *link;
        if (h->dontfork) {
            void *p = mmap((void *)h->base, h->total, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (p == (void *)h->base) {
                h->dontfork = 0;
            }
            else {
                if (p != MAP_FAILED) {
                    (void)munmap(p, h->total);
                }
                if (h->owner != NULL) {
                    h->owner->held = NULL;
                }
                *link = h->next;
                PyMem_RawFree(h); /* plain memory: the child's own copy */
                continue;
            }
        }
        link = &h->next;
    }
}

/* Release the memory: destroy the bytes (WIPE, see "Wiping"), call the test hook, munmap.
 * The mapping is marked released first, so nothing can reach it twice.  *canary_ok is set to
 * 0 if the canary after the value was overwritten.  The mapping is unbound: a bound one is
 * wiped while bound, and e/what carry the error of that wipe (mapping_close_now). */
static int
mapping_release(MappingObject *m, int *canary_ok, int e, const char *what)
{
    *canary_ok = 1;
    uintptr_t base = m->base;
    if (base == 0) {
        return 0;
    }
    m->base = 0;
    fault_table_remove(m->addr);
    if (mapping_absent(m)) { /* nothing of it in this process: the address is not ours */
        wipe_unregister(m);
        return 0;
    }
    int rc = 0;
    if (e == 0) {
        e = mapping_scrub(m, 0, &what);
    }
    *canary_ok = !(m->flags & MAP_F_CANARY_BAD);
    m->flags &= ~MAP_F_CANARY_BAD;
    if (e == 0 && (m->flags & MAP_F_WIPE) && m->on_release != NULL &&
        (e = mapping_show_zeros(m, &what)) == 0) {
        /* the pages read as zeros here, and no page ever held the secret open.  The hook is
         * Python code: a fork there must leave the child its own copy to unmap, not a hole
         * that its next mapping lands in (secret memory is DONTFORK): the mapping stays on
         * the wipe list, marked releasing, and fork_child() fills the hole. */
        m->releasing = base;
        PyObject *r = PyObject_CallFunction(m->on_release, "KK", (unsigned long long)m->addr,
                                            (unsigned long long)m->len);
        m->releasing = 0;
        if (r == NULL) {
            rc = -1;
        }
        Py_XDECREF(r);
    }
    wipe_unregister(m);
    if (mapping_absent(m)) { /* a raw clone(2) child ran the hook on: not ours any more */
        if (e != 0 && rc == 0) {
            raise_errno(e, what);
            rc = -1;
        }
        return rc;
    }
    if (m->exports > 0) {
        /* a memoryview of it is alive: the range stays reserved, its pages dropped (Held
         * ranges), until the last export goes */
        void *p = mmap((void *)base, m->total, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        int dontfork = 0;
        if (p == MAP_FAILED) { /* the pages stay: discarded and closed, as below */
            const char *w = NULL;
            (void)mapping_discard(m, PROT_NONE, -1, &w);
            (void)mprotect((void *)base, m->total, PROT_NONE);
            dontfork = mapping_traits(m)->shared;
        }
        held_add(m, base, dontfork);
    }
    else if (munmap((void *)base, m->total) != 0) {
        if (e == 0) {
            e = errno;
            what = "munmap";
        }
        /* kept: its bytes discarded unless they were zeroed, and closed; unmapped at a later
         * release (Held ranges) */
        if (m->flags & MAP_F_WIPE) {
            const char *w = NULL;
            (void)mapping_discard(m, PROT_NONE, -1, &w);
        }
        (void)mprotect((void *)base, m->total, PROT_NONE);
        held_add(m, base, mapping_traits(m)->shared);
    }
    else if (held_ranges != NULL) {
        held_sweep(); /* retry the ranges whose munmap failed before */
    }
    if (e != 0 && rc == 0) {
        raise_errno(e, what);
        rc = -1;
    }
    return rc;
}

/* close() and interpreter exit: wipe the bytes while the pages are still bound (their state
 * is known), end the binding without untagging, release the memory. */
int
mapping_close_now(MappingObject *m, int *canary_ok)
{
    const char *what = NULL;
    int e = mapping_scrub(m, 0, &what);
    BindingObject *b = m->binding;
    Ended ended = {0};
    if (b != NULL) {
        Py_INCREF(b);
        (void)binding_end(b, UNTAG_NO, &ended); /* fails only when untagging */
        ended.ours = b;
    }
    /* the references the binding gave up (often the key's last: a finalizer on it runs) go
     * after the memory is released, so that code finds the region closed, not unbound and
     * still mapped */
    int rc = mapping_release(m, canary_ok, e, what);
    (void)ended_finish(&ended);
    return rc;
}

/* The collector is taking a bound secure mapping apart (tp_clear): wipe it now, while its
 * pages' state is known; the forced untag that follows closes them (binding_end). */
void
mapping_collect_wipe(MappingObject *m)
{
    const char *what = NULL;
    int e = mapping_scrub(m, 0, &what);
    if (e != 0) {
        raise_errno(e, what);
        write_unraisable("pkeyguard: wiping a collected secure region");
    }
}

/* Fault in every page of a new memfd_secret mapping, so that a page the kernel cannot back
 * fails the creation instead of killing the process at its first touch.  Some kernels charge
 * secret memory against RLIMIT_MEMLOCK only when a page is first touched, and answer a touch
 * over the limit with SIGBUS (Debian's 6.1.0-57, Linux 6.1.192, even with CAP_IPC_LOCK);
 * MADV_POPULATE_WRITE and mlock refuse secret memory (EINVAL), and it has no fallocate.  So the
 * kernel writes into each page for us: rt_sigprocmask() stores the signal mask there with
 * put_user(), and a page it cannot back makes the call fail (EFAULT) instead.  0 or an errno. */
static int
secretmem_populate(uintptr_t addr, size_t len)
{
    for (size_t off = 0; off < len; off += (size_t)page_size) {
        void *p = (void *)(addr + off);
        if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, p, sizeof(uint64_t)) != 0) {
            return errno;
        }
        wipe_bytes(p, sizeof(uint64_t)); /* a new page starts zeroed */
    }
    return 0;
}

int
raise_canary(MappingObject *m)
{
    PyErr_Format(err(E_CANARY),
                 "the canary after a secure region's %zu-byte value was overwritten: something "
                 "wrote past the end of the value (the memory was wiped and unmapped anyway)",
                 m->size);
    return -1;
}

/* ---- Making a mapping: its backing, then one step per layout option ------------------- */

/* A mapping being made: the request, and what the steps did so far (flags) or where they
 * failed (failed: the system call; errno holds its error). */
typedef struct {
    Backing backing;
    size_t size, len, total, page;
    int prot, guard_pages, lock, dontdump, wipeonfork, wipe;
    Py_ssize_t canary_size;
    void *base;     /* the reservation: guard pages (or spacers) and the usable pages */
    uintptr_t addr; /* the usable pages */
    int flags;      /* MAP_F_* */
    const char *failed;
} MapBuild;

/* Reserve the whole range: a PROT_NONE page on each side, a guard page, or for a region
 * without guard pages a spacer, so that the region's pages are a mapping entry of their own
 * (see "Spacers"). */
static int
map_reserve(MapBuild *r)
{
    r->base = mmap(NULL, r->total, r->guard_pages ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->base == MAP_FAILED) {
        r->failed = "mmap";
        return -1;
    }
    r->addr = (uintptr_t)r->base + r->page;
    return 0;
}

/* memfd_secret(2): pages removed from the kernel's direct map, locked (they count against
 * RLIMIT_MEMLOCK) and left out of core dumps by the kernel.  They replace the usable pages of
 * the reservation; the descriptor is closed at once (the mapping keeps the memory) and never
 * leaves this call. */
static int
secretmem_allocate(MapBuild *r)
{
#ifdef SYS_memfd_secret
    int fd = (int)syscall(SYS_memfd_secret, O_CLOEXEC);
#else
    int fd = -1;
    errno = ENOSYS;
#endif
    if (fd < 0) {
        r->failed = "memfd_secret";
        return -1;
    }
    if (ftruncate(fd, (off_t)r->len) != 0) {
        int e = errno;
        (void)close(fd);
        errno = e;
        r->failed = "ftruncate";
        return -1;
    }
    void *p = mmap((void *)r->addr, r->len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    int e = errno;
    (void)close(fd);
    errno = e;
    if (p == MAP_FAILED) {
        r->failed = "mmap";
        return -1;
    }
    r->flags |= MAP_F_SECRETMEM;
    e = secretmem_populate(r->addr, r->len);
    if (e != 0) {
        /* EFAULT: the kernel would not back a page.  Other kernels refuse the same request at
         * mmap (EAGAIN over RLIMIT_MEMLOCK): report it the same way. */
        struct rlimit rl;
        int limited = getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY;
        errno = e != EFAULT ? e : limited ? EAGAIN : ENOMEM;
        r->failed = "mmap";
        return -1;
    }
    return 0;
}

/* The backing's pages, inside the reservation. */
static int
backing_allocate(MapBuild *r)
{
    switch (r->backing) {
    case BACKING_SECRETMEM:
        return secretmem_allocate(r);
    case BACKING_ANON:
        /* the reservation's own pages: opened between the guard pages */
        if (r->guard_pages && mprotect((void *)r->addr, r->len, PROT_READ | PROT_WRITE) != 0) {
            r->failed = "mprotect";
            return -1;
        }
        return 0;
    }
    return 0;
}

/* What the backing keeps out of fork children, and the layout options it makes moot. */
static int
backing_advise(MapBuild *r)
{
    switch (r->backing) {
    case BACKING_SECRETMEM:
        /* MAP_SHARED: the kernel refuses WIPEONFORK; a fork child gets a hole, which
         * backing_fork_child fills with closed zero pages */
        if (madvise(r->base, r->total, MADV_DONTFORK) != 0) {
            r->failed = "madvise";
            return -1;
        }
        r->lock = r->wipeonfork = 0; /* locked by the kernel; WIPEONFORK is for private pages */
        return 0;
    case BACKING_ANON:
        return 0;
    }
    return 0;
}

/* Without guard pages, the side pages are spacers: PROT_NONE. */
static int
map_spacers(MapBuild *r)
{
    if (!r->guard_pages && (mprotect(r->base, r->page, PROT_NONE) != 0 ||
                            mprotect((void *)(r->addr + r->len), r->page, PROT_NONE) != 0)) {
        r->failed = "mprotect";
        return -1;
    }
    return 0;
}

static int
map_dontdump(MapBuild *r)
{
    if (r->dontdump) {
        if (madvise(r->base, r->total, MADV_DONTDUMP) == 0) {
            r->flags |= MAP_F_DONTDUMP;
        }
        else if (errno != EINVAL) { /* EINVAL: this kernel lacks the advice */
            r->failed = "madvise";
            return -1;
        }
    }
    else if ((madvise(r->base, r->page, MADV_DONTDUMP) != 0 ||
              madvise((void *)(r->addr + r->len), r->page, MADV_DONTDUMP) != 0) &&
             errno != EINVAL) {
        /* the side pages differ from the region's in a flag: never merged with it */
        r->failed = "madvise";
        return -1;
    }
    return 0;
}

static int
map_wipeonfork(MapBuild *r)
{
    if (r->wipeonfork) {
        if (madvise((void *)r->addr, r->len, MADV_WIPEONFORK) == 0) {
            r->flags |= MAP_F_WIPEONFORK;
        }
        else if (errno != EINVAL) {
            r->failed = "madvise";
            return -1;
        }
    }
    return 0;
}

static int
map_lock(MapBuild *r)
{
    if (r->lock) {
        /* The raw system call: ASan makes libc's mlock() a no-op. */
        if (syscall(SYS_mlock, (void *)r->addr, r->len) != 0) {
            r->failed = "mlock";
            return -1;
        }
        r->flags |= MAP_F_LOCKED;
    }
    return 0;
}

/* Random bytes right after the value, remembered in m (checked by the wipe). */
static int
map_canary(MapBuild *r, MappingObject *m)
{
    ssize_t got = 0;
    while (got < r->canary_size) {
        /* The system call, not glibc's getrandom() (2.25): the wheel stays manylinux2014. */
        long n = syscall(SYS_getrandom, m->canary + got, (size_t)(r->canary_size - got), 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            r->failed = "getrandom";
            return -1;
        }
        got += n;
    }
    if (r->canary_size > 0) {
        memcpy((void *)(r->addr + r->size), m->canary, (size_t)r->canary_size);
    }
    return 0;
}

static int
map_protect(MapBuild *r)
{
    if (r->prot != (PROT_READ | PROT_WRITE) && mprotect((void *)r->addr, r->len, r->prot) != 0) {
        r->failed = "mprotect";
        return -1;
    }
    return 0;
}

/* Undo the steps that succeeded (all of them are in the reservation) and raise. */
static void
map_undo(MapBuild *r)
{
    int e = errno;
    if (r->flags & MAP_F_LOCKED) {
        (void)syscall(SYS_munlock, (void *)r->addr, r->len);
    }
    (void)munmap(r->base, r->total);
    raise_errno(e, r->failed);
}

/* Mapping(size, prot, *, fmt, swap, ctype, view_types, label, guard_pages, lock, dontdump,
 * wipeonfork, canary_size, wipe, on_release, secretmem): check the request, allocate the
 * object, then the steps in order (each sets r.failed and errno on failure). */
static PyObject *
Mapping_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "prot", "fmt", "swap", "ctype", "view_types", "label",
                             "guard_pages", "lock", "dontdump", "wipeonfork", "canary_size",
                             "wipe", "on_release", "secretmem", NULL};
    Py_ssize_t size;
    MapBuild r = {0};
    int fmt = 's', swap = 0, secretmem = 0;
    PyObject *ctype = Py_None, *view_types, *on_release = Py_None;
    const char *label = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ni|$CpOO!sppppnpOp:Mapping", kwlist, &size,
                                     &r.prot, &fmt, &swap, &ctype, &PyTuple_Type, &view_types,
                                     &label, &r.guard_pages, &r.lock, &r.dontdump,
                                     &r.wipeonfork, &r.canary_size, &r.wipe, &on_release,
                                     &secretmem)) {
        return NULL;
    }
    if (size <= 0 || (size_t)size > MAX_REGION_SIZE) {
        PyErr_Format(err(E_REGION), "region size must be within 1..%zu, got %zd",
                     MAX_REGION_SIZE, size);
        return NULL;
    }
    if (r.prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) {
        PyErr_Format(PyExc_ValueError, "bad page rights %d", r.prot);
        return NULL;
    }
    if (r.canary_size < 0 || r.canary_size > CANARY_MAX) {
        PyErr_Format(PyExc_ValueError, "canary_size must be within 0..%d", CANARY_MAX);
        return NULL;
    }
    if (PyTuple_GET_SIZE(view_types) != 2) {
        PyErr_SetString(PyExc_TypeError, "view_types must be (read type, write type)");
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        PyObject *t = PyTuple_GET_ITEM(view_types, i);
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &View_Type)) {
            PyErr_SetString(PyExc_TypeError, "view_types must be View subtypes");
            return NULL;
        }
    }
    MappingObject *m = (MappingObject *)type->tp_alloc(type, 0);
    if (m == NULL) {
        return NULL;
    }
    r.backing = secretmem ? BACKING_SECRETMEM : BACKING_ANON;
    r.size = (size_t)size;
    r.page = (size_t)page_size;
    r.len = (r.size + (size_t)r.canary_size + r.page - 1) / r.page * r.page;
    r.total = r.len + 2 * r.page;
    if (r.backing == BACKING_SECRETMEM) {
        r.wipe = 1; /* on the wipe list: fork_child() finds it there */
    }
    if (map_reserve(&r) < 0) {
        raise_errno(errno, r.failed);
        Py_DECREF(m);
        return NULL;
    }
    r.flags = (r.wipe ? MAP_F_WIPE : 0) | (r.guard_pages ? MAP_F_GUARDED : 0);
    if (backing_allocate(&r) < 0 || backing_advise(&r) < 0 || map_spacers(&r) < 0 ||
        map_dontdump(&r) < 0 || map_wipeonfork(&r) < 0 || map_lock(&r) < 0 ||
        map_canary(&r, m) < 0 || map_protect(&r) < 0) {
        map_undo(&r);
        Py_DECREF(m);
        return NULL;
    }
    m->base = (uintptr_t)r.base;
    m->total = r.total;
    m->addr = r.addr;
    m->len = r.len;
    m->size = r.size;
    m->prot = r.prot;
    m->flags = r.flags;
    m->pid = getpid();
    m->forks = fork_count;
    m->canary_len = r.canary_size;
    m->fmt = (char)fmt;
    m->swap = (char)swap;
    Py_INCREF(view_types);
    m->view_types = view_types;
    if (ctype != Py_None) {
        Py_INCREF(ctype);
        m->ctype = ctype;
    }
    if (on_release != Py_None) {
        Py_INCREF(on_release);
        m->on_release = on_release;
    }
    fault_table_add(r.addr, r.len, label);
    if (r.wipe) {
        wipe_register(m);
    }
    return (PyObject *)m;
}

static int
Mapping_traverse(PyObject *op, visitproc visit, void *arg)
{
    MappingObject *m = Mapping_CAST(op);
    Py_VISIT(m->binding);
    Py_VISIT(m->on_release);
    Py_VISIT(m->view_types);
    Py_VISIT(m->ctype);
    return 0;
}

static int
Mapping_clear(PyObject *op)
{
    MappingObject *m = Mapping_CAST(op);
    /* In a garbage cycle with its binding: wipe (while the pages' state is known) and untag
     * now; the memory goes in the deallocator. */
    BindingObject *b = m->binding;
    if (b != NULL) {
        mapping_collect_wipe(m);
        Py_INCREF(b);
        if (binding_end_now(b, UNTAG_FORCE) < 0) {
            write_unraisable("pkeyguard: untagging a collected region");
        }
        Py_DECREF(b);
    }
    Py_CLEAR(m->on_release);
    return 0;
}

static void
Mapping_dealloc(PyObject *op)
{
    MappingObject *m = Mapping_CAST(op);
    PyObject_GC_UnTrack(m);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    /* A bound mapping is held by its binding: none reaches its deallocator bound. */
    int canary_ok;
    if (mapping_release(m, &canary_ok, 0, NULL) < 0) {
        write_unraisable("pkeyguard: releasing a region's memory");
    }
    else if (!canary_ok) {
        raise_canary(m);
        write_unraisable("pkeyguard: releasing a secure region");
    }
    PyErr_Restore(et, ev, tb);
    if (m->held != NULL) { /* no view is left (views hold their mapping): unmap it now */
        m->held->owner = NULL;
        m->held = NULL;
        held_sweep();
    }
    Py_CLEAR(m->on_release);
    Py_CLEAR(m->view_types);
    Py_CLEAR(m->ctype);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* close(): detach from the key (refused while a guard of this region is active), then
 * release the memory.  Idempotent. */
static PyObject *
Mapping_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    MappingObject *m = Mapping_CAST(op);
    if (m->base == 0) {
        Py_RETURN_NONE;
    }
    BindingObject *b = m->binding;
    if (b != NULL) {
        if (b->active > 0) {
            return PyErr_Format(err(E_REGION),
                                "cannot close %R: %zd guard(s) on its association are still "
                                "active; leave their 'with' blocks first",
                                (PyObject *)m, b->active);
        }
    }
    int canary_ok;
    if (mapping_close_now(m, &canary_ok) < 0) {
        return NULL;
    }
    if (!canary_ok) {
        raise_canary(m);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _protect(prot): new page rights (the key tag is kept).  Refused while a guard of this
 * region's association is active: views taken inside it were checked against the old
 * rights. */
static PyObject *
Mapping_protect(PyObject *op, PyObject *arg)
{
    MappingObject *m = Mapping_CAST(op);
    long prot = PyLong_AsLong(arg);
    if (prot == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) {
        return PyErr_Format(PyExc_ValueError, "bad page rights %ld", prot);
    }
    if (mapping_check_open(m) < 0) {
        return NULL;
    }
    BindingObject *b = m->binding;
    if (b != NULL) {
        if (b->active > 0) {
            return PyErr_Format(err(E_REGION),
                                "cannot change the page rights of %R: %zd guard(s) on its "
                                "association are still active; views taken inside them rely on "
                                "the current rights; leave their 'with' blocks first",
                                (PyObject *)m, b->active);
        }
    }
    /* the tag is kept; parked pages stay closed: the new rights apply when it is tagged again */
    int applied = (int)page_plan(b != NULL ? b->key : NULL, (int)prot).prot;
    if (!mapping_absent(m) && mprotect((void *)m->addr, m->len, applied) != 0) {
        return raise_errno(errno, "mprotect");
    }
    m->prot = (int)prot;
    Py_RETURN_NONE;
}

static PyObject *
Mapping_get_address(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    if (mapping_check_open(m) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)m->addr);
}

static PyObject *
Mapping_get_mapped_size(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    if (mapping_check_open(m) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(m->len);
}

static PyObject *
Mapping_get_size(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    return PyLong_FromSize_t(m->size);
}

static PyObject *
Mapping_get_closed(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    return PyBool_FromLong(m->base == 0);
}

static PyObject *
Mapping_get_prot(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    return PyLong_FromLong(m->prot);
}

static PyObject *
Mapping_get_inherited(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    return PyBool_FromLong(m->base != 0 && mapping_inherited(m));
}

static PyObject *
Mapping_get_binding(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    if (m->binding == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(m->binding);
    return (PyObject *)m->binding;
}

static PyObject *
Mapping_get_advice(PyObject *op, void *Py_UNUSED(c))
{
    MappingObject *m = Mapping_CAST(op);
    int f = m->flags;
    return Py_BuildValue("{sOsOsOsOsOsO}", "dontdump", (f & MAP_F_DONTDUMP) ? Py_True : Py_False,
                         "wipeonfork", (f & MAP_F_WIPEONFORK) ? Py_True : Py_False,
                         "locked", ((f & MAP_F_LOCKED) || mapping_traits(m)->locked) ? Py_True
                                                                                     : Py_False,
                         "guard_pages", (f & MAP_F_GUARDED) ? Py_True : Py_False,
                         "secretmem", (f & MAP_F_SECRETMEM) ? Py_True : Py_False,
                         "dontfork", mapping_traits(m)->shared ? Py_True : Py_False);
}

static PyObject *
Mapping_get_backing(PyObject *op, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(mapping_traits(Mapping_CAST(op))->name);
}

static PyMethodDef Mapping_methods[] = {
    {"close", Mapping_close, METH_NOARGS,
     "Unmap the memory (zeroed first for secure regions); a second call does nothing.\n\n"
     "Refused while a guard of the region's association is active (on any thread)."},
    {"_protect", Mapping_protect, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mapping_getset[] = {
    {"address", Mapping_get_address, NULL, "Address of the first byte (page-aligned).",
     NULL},
    {"mapped_size", Mapping_get_mapped_size, NULL,
     "Bytes mapped: the size rounded up to whole pages.", NULL},
    {"size", Mapping_get_size, NULL, "Size of the value in bytes.", NULL},
    {"closed", Mapping_get_closed, NULL, NULL, NULL},
    {"_prot", Mapping_get_prot, NULL, NULL, NULL},
    {"_binding", Mapping_get_binding, NULL, NULL, NULL},
    {"_advice", Mapping_get_advice, NULL, NULL, NULL},
    {"_backing", Mapping_get_backing, NULL, NULL, NULL},
    {"_inherited", Mapping_get_inherited, NULL,
     "mapped by the parent before a fork: the bytes did not come along", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Mapping_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Mapping",
    .tp_basicsize = sizeof(MappingObject),
    .tp_dealloc = Mapping_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Page-aligned memory owned by the core (internal base of RegionGuard).",
    .tp_traverse = Mapping_traverse,
    .tp_clear = Mapping_clear,
    .tp_methods = Mapping_methods,
    .tp_getset = Mapping_getset,
    .tp_new = Mapping_new,
};
