/*
 * pkeyguard._core: the part of pkeyguard that must be native.
 *
 * The core owns every resource pkeyguard hands out, so that each is released exactly once,
 * in the right order, whatever order the objects die in (reference counting, the cyclic GC,
 * an exception raised by a signal handler at any bytecode, interpreter exit):
 *
 *   Key      a protection key (pkey_alloc'ed on pku, a logical number on mprotect); freed
 *            when closed or collected, always after the pages tagged with it are untagged.
 *   Mapping  page-aligned memory (mmap) with an optional secure layout (guard pages, mlock,
 *            MADV_DONTDUMP/WIPEONFORK, canary, zeroed before unmap); unmapped when closed or
 *            collected.  RegionGuard is its Python subclass.
 *   Binding  the link between one Mapping and one Key (AssociatedRegion is its subclass).
 *            The Mapping and the Binding hold each other while bound, and the Binding holds
 *            the Key: a Key is never freed while its pages are tagged, and a Mapping is never
 *            unmapped while tagged.  The Key lists its live Bindings (borrowed).
 *   Guard    switches the calling thread's rights for one key while active.  Each thread has
 *            a stack of its active guards, owned by an object in the thread's state dict: when
 *            the thread ends (or a fork child drops it), its guards are ended.  Ownership is
 *            that stack, never a reusable thread ident.
 *   View     typed or byte access to a bound Mapping, valid only in the activation of the
 *            guard that made it, on that guard's thread.  Every access converts its arguments
 *            first (running any user code), then checks, then touches memory, with no Python
 *            code in between.
 *
 * Every refusal that protects memory (closing a key or region, detaching or re-protecting a
 * region, entering a guard) is checked in the same C call that makes the change, with the GIL
 * held and before anything can run Python code, so no other thread, finalizer or signal
 * handler can slip in between.  Allocation happens before the checks, mutation after them.
 */

#include "_core.h"

static int pku_enabled = 0; /* set once Python has proved OSPKE and a working pkey_alloc */
static Py_ssize_t page_size = 4096;


static PyTypeObject Key_Type, Mapping_Type, Binding_Type, Guard_Type, View_Type, Group_Type,
    StackOwner_Type;

static int
is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* ------------------------------------------------------------------------------------ */
/* Errors: looked up by name in pkeyguard._errors (registered at its import)           */

static const char *const err_names[E_COUNT] = {
    "GuardStateError", "GuardOrderError", "GuardThreadError", "ViewError", "AccessError",
    "PkuUnavailableError", "MprotectError", "RegionError", "KeyStateError", "CanaryError",
    "ArgumentTypeError", "SecretUnavailableError", "KeyExhaustedError",
};
static PyObject *err_classes[E_COUNT];

PyObject *
err(int which)
{
    if (err_classes[which] != NULL) {
        return err_classes[which];
    }
    switch (which) { /* before pkeyguard._errors registered itself */
    case E_VIEW: case E_REGION: return PyExc_ValueError;
    case E_ACCESS: return PyExc_PermissionError;
    case E_MPROTECT: case E_KEY_EXHAUSTED: return PyExc_OSError;
    case E_ARGTYPE: return PyExc_TypeError;
    default: return PyExc_RuntimeError;
    }
}

/* The one helper for "raise with the syscall's name": raise err(which)(errnum, message or
 * strerror(errnum)) with .syscall set (psutil-style "(originated from <syscall>)" comes from the
 * class's __str__).  Returns NULL. */
PyObject *
raise_syscall_error(int which, int errnum, PyObject *message, const char *syscall_name)
{
    PyObject *cls = err(which);
    PyObject *exc = message != NULL ? PyObject_CallFunction(cls, "iO", errnum, message)
                                    : PyObject_CallFunction(cls, "is", errnum, strerror(errnum));
    if (exc == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(syscall_name);
    if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *
raise_errno(int errnum, const char *syscall_name)
{
    return raise_syscall_error(E_MPROTECT, errnum, NULL, syscall_name);
}

int
require_pku(void)
{
    if (!pku_enabled) {
        PyErr_SetString(err(E_PKU_UNAVAILABLE),
                        "RDPKRU/WRPKRU are not enabled: this process runs on the mprotect "
                        "backend (the CPU or kernel lacks PKU); see pkeyguard.backend()");
        return -1;
    }
    return 0;
}

/* Report an error that cannot be raised (a finalizer, a thread's end) and carry on. */
static void
write_unraisable(const char *where)
{
    if (PyErr_Occurred()) {
        PyObject *msg = PyUnicode_FromString(where);
        PyErr_WriteUnraisable(msg);
        Py_XDECREF(msg);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Small helpers                                                                        */

static int
prot_for_level(int prot, int level)
{
    switch (level) {
    case LEVEL_NONE:
        return prot & PROT_EXEC; /* pkeys never restrict instruction fetch; mirror that */
    case LEVEL_READ:
        return prot & ~PROT_WRITE;
    default:
        return prot;
    }
}

/* Set to zero so that the compiler cannot drop it as a dead store. */
static void
wipe_bytes(void *p, size_t n)
{
    memset(p, 0, n);
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* ------------------------------------------------------------------------------------ */
/* Per-thread guard stacks                                                              */
/*
 * A thread's active guards form a stack (innermost on top), reached through a C thread-local
 * pointer on the hot path.  The stack is owned by a small object stored in the thread's state
 * dict; CPython clears that dict when the thread ends (and, in a fork child, for every thread
 * but the one that forked), which ends whatever guards the thread still held.
 */


_Thread_local ThreadStack *tls_stack __attribute__((tls_model("initial-exec"))) = NULL;
static _Thread_local int tls_creating __attribute__((tls_model("initial-exec"))) = 0;

typedef struct {
    PyObject_HEAD
    ThreadStack *stack;
} StackOwnerObject;

static PyObject *stack_dict_key; /* interned "pkeyguard._core.thread_stack" */

static void stack_abandon(ThreadStack *s);

static void
StackOwner_dealloc(StackOwnerObject *o)
{
    ThreadStack *s = o->stack;
    o->stack = NULL;
    if (s != NULL) {
        stack_abandon(s);
        PyMem_RawFree(s);
    }
    PyObject_Free(o);
}

static PyTypeObject StackOwner_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.thread_stack",
    .tp_basicsize = sizeof(StackOwnerObject),
    .tp_dealloc = (destructor)StackOwner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* This thread's stack, made on first use.  May run arbitrary code (allocation can start the
 * GC), so callers call it before they check anything. */
static ThreadStack *
get_stack(void)
{
    ThreadStack *s = tls_stack;
    if (s != NULL) {
        return s;
    }
    if (tls_creating) {
        PyErr_SetString(PyExc_RuntimeError,
                        "pkeyguard: a guard cannot be entered by a finalizer while this "
                        "thread's guard stack is being created");
        return NULL;
    }
    tls_creating = 1;
    PyObject *dict = PyThreadState_GetDict();
    StackOwnerObject *owner = NULL;
    if (dict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pkeyguard: this thread has no thread state");
        goto done;
    }
    Py_INCREF(dict);
    owner = PyObject_New(StackOwnerObject, &StackOwner_Type);
    s = PyMem_RawCalloc(1, sizeof(ThreadStack));
    if (owner == NULL || s == NULL) {
        if (owner != NULL) {
            owner->stack = NULL;
        }
        PyMem_RawFree(s);
        s = NULL;
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done_dict;
    }
    s->ident = PyThread_get_thread_ident();
    owner->stack = s;
    if (PyDict_SetItem(dict, stack_dict_key, (PyObject *)owner) < 0) {
        owner->stack = NULL;
        PyMem_RawFree(s);
        s = NULL;
        goto done_dict;
    }
    tls_stack = s;
done_dict:
    Py_XDECREF(owner);
    Py_DECREF(dict);
done:
    tls_creating = 0;
    return s;
}

/* ------------------------------------------------------------------------------------ */
/* Key                                                                                  */




KeyObject live_keys = {.live_prev = &live_keys, .live_next = &live_keys};

Py_ssize_t live_key_count = 0;

static void
key_register(KeyObject *k)
{
    k->live_next = &live_keys;
    k->live_prev = live_keys.live_prev;
    live_keys.live_prev->live_next = k;
    live_keys.live_prev = k;
    live_key_count++;
}

static void
key_unregister(KeyObject *k)
{
    if (k->live_next != NULL) {
        k->live_prev->live_next = k->live_next;
        k->live_next->live_prev = k->live_prev;
        k->live_next = k->live_prev = NULL;
        live_key_count--;
    }
}

/* How key_apply_level() treats a failure. */
enum {
    APPLY_ATOMIC = 0, /* put back what it changed: the key stays at its level (the caller's
                         operation fails as a whole, and says so) */
    APPLY_FORCE = 1,  /* the level is the key's from now on (a guard of a thread that ended
                         is gone whatever happens): every region is tried, and the ones that
                         fail stay as they were, marked by k->mixed */
};

/* mprotect every live binding's pages to prot ∩ level (mprotect backend).  Returns 0, or
 * the errno of the first failure; raises nothing (allocating an exception could run
 * finalizers in the middle of its caller's change).
 *
 * Fail closed: no region is ever left wider than the key's recorded level.  A region that
 * cannot be narrowed (an exit, a put-back) is tried once more, then with no access at all,
 * which is narrower than every level: if that works the region lags *narrower* (k->mixed,
 * MAP_F_LAGGING) and the change goes on, so an exit completes closed unless every try fails.
 * Never on a region with live buffer exports: a memoryview taken under the target level
 * would fault, so that narrowing fails instead (the region keeps its wider rights).  If both fail,
 * a narrowing change (an exit) keeps the key at its level, and the regions it narrowed
 * already stay narrowed, lagging behind it (nothing is widened again).  A widening change
 * (an entry) under APPLY_ATOMIC puts back what it changed (narrowing, with the same retry);
 * a region that cannot be put back stays wider, so the change cannot be undone and is
 * completed instead: the key takes `level` (0 is returned: the caller's entry succeeds) and
 * the regions not yet widened lag behind.
 * k->mixed records that a key has lagging regions, MAP_F_LAGGING which ones may lag (every
 * region of a key whose change failed: the wipe does not trust their rights); every switch
 * re-applies the level to all of them, and a view re-applies it to its own region before an
 * access (view_settle), so a lagging region never faults. */
static int
region_protect(MappingObject *m, int level, int narrowing, int *lagging)
{
    void *addr = (void *)m->addr;
    if (mprotect(addr, m->len, prot_for_level(m->prot, level)) == 0) {
        m->flags &= ~MAP_F_LAGGING;
        return 0;
    }
    int e = errno;
    if (!narrowing) {
        return e;
    }
    if (mprotect(addr, m->len, prot_for_level(m->prot, level)) == 0) { /* a passing cause */
        m->flags &= ~MAP_F_LAGGING;
        return 0;
    }
    if (level != LEVEL_NONE && m->exports == 0 &&
        mprotect(addr, m->len, prot_for_level(m->prot, LEVEL_NONE)) == 0) {
        m->flags |= MAP_F_LAGGING; /* narrower than the level */
        *lagging = 1;
        return 0;
    }
    return e;
}

/* A change of k failed part-way: no region's rights can be trusted to be its level. */
static void
key_mark_lagging(KeyObject *k)
{
    k->mixed = 1;
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        k->bindings[i]->mapping->flags |= MAP_F_LAGGING;
    }
}

static int
key_apply_level(KeyObject *k, int level, int how)
{
    int first = 0, lagging = 0;
    int narrowing = level < k->effective_level; /* not a re-apply: its regions may widen */
    Py_ssize_t failed_at = -1;
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        MappingObject *m = k->bindings[i]->mapping;
        if (mapping_absent(m)) {
            continue;
        }
        int e = region_protect(m, level, narrowing, &lagging);
        if (e != 0) {
            if (first == 0) {
                first = e;
                failed_at = i;
            }
            if (how == APPLY_ATOMIC && !narrowing) {
                break; /* an entry: put back below */
            }
        }
    }
    if (first == 0) {
        k->effective_level = level;
        k->mixed = lagging;
        return 0;
    }
    if (how == APPLY_FORCE) {
        k->effective_level = level;
        key_mark_lagging(k);
        return first;
    }
    if (narrowing) {
        /* An exit (or a re-apply) that failed: the regions that could be narrowed stay
         * narrowed, lagging behind the key, which keeps its level (nothing is widened again;
         * the failed ones are as they were). */
        key_mark_lagging(k);
        return first;
    }
    int stuck = 0;
    for (Py_ssize_t j = 0; j < failed_at; j++) { /* put back: the pages agree on one level */
        MappingObject *q = k->bindings[j]->mapping;
        if (mapping_absent(q)) {
            continue;
        }
        if (region_protect(q, k->effective_level, 1, &lagging) != 0) {
            stuck = 1;
        }
    }
    if (lagging) {
        k->mixed = 1; /* a put-back left a region narrower than the key's level */
    }
    if (stuck) {
        key_mark_lagging(k);
        k->effective_level = level; /* a region stays wider: complete the change */
        return 0;
    }
    return first;
}


/* ------------------------------------------------------------------------------------ */
/* Page state: the one decision                                                         */

/* What a bound mapping's pages carry: the rights and, on pku, the number they are tagged with. */
typedef struct {
    long prot;
    long pkey; /* pku: the number to tag them with (0: key 0, parked); -1: no pku tag (mprotect) */
} PagePlan;
/* The fields are long, not int: two ints would travel packed in one register, and glibc's
 * mprotect stub hands the kernel the whole register (the upper half, the pkey, made its prot
 * argument invalid: EINVAL).  A long holds the value alone. */

/* The rights and tag that pages with their own rights own_prot must have now, bound to k (NULL:
 * unbound), in every mode: a mapping's own rights, narrowed to the key's process-wide level
 * (mprotect), or closed while its key is parked (pku, sim); on pku the key's number, or key 0
 * while parked.  Key_bind, Mapping_protect and the fork child's handlers all ask this. */
static PagePlan
page_plan(KeyObject *k, int own_prot)
{
    PagePlan d = {own_prot, -1};
    if (k == NULL) {
        return d;
    }
    switch (k->mode) {
    case MODE_MPROTECT:
        d.prot = prot_for_level(own_prot, k->effective_level);
        break;
    case MODE_PKU:
        d.pkey = k->slot.hw >= 0 ? k->slot.hw : 0; /* parked: key 0 */
        /* fall through */
    case MODE_SIM:
        d.prot = k->slot.hw >= 0 ? own_prot : PROT_NONE;
        break;
    default:
        break;
    }
    return d;
}

/* The system call that applies a plan. */
static inline const char *
page_plan_syscall(PagePlan d)
{
    return d.pkey >= 0 ? "pkey_mprotect" : "mprotect";
}

/* Apply a plan to m's pages: 0, or -1 with errno set. */
static int
page_plan_apply(MappingObject *m, PagePlan d)
{
    long rc = d.pkey >= 0 ? syscall(SYS_pkey_mprotect, m->addr, m->len, d.prot, d.pkey)
                          : mprotect((void *)m->addr, m->len, (int)d.prot);
    return rc == 0 ? 0 : -1;
}

static int
key_wanted_level(KeyObject *k)
{
    for (int lv = LEVEL_MAX; lv >= LEVEL_NONE; lv--) {
        if (k->counts[lv] > 0) {
            return lv;
        }
    }
    return k->base_level;
}

static int
key_reserve(KeyObject *k)
{
    if (k->nbindings < k->cap) {
        return 0;
    }
    Py_ssize_t cap = k->cap ? k->cap * 2 : 4;
    BindingObject **p = PyMem_Realloc(k->bindings, (size_t)cap * sizeof(BindingObject *));
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    k->bindings = p;
    k->cap = cap;
    return 0;
}

/* Drop b from k's list in O(1): the last binding takes its slot (the list has no order).
 * A search from the start made closing a key, or ending its associations newest first,
 * quadratic in its number of regions (0.3 s for 30,000 regions). */
static void
key_remove_binding(KeyObject *k, BindingObject *b)
{
    Py_ssize_t i = b->slot;
    if (i < 0 || i >= k->nbindings || k->bindings[i] != b) {
        return; /* not listed */
    }
    BindingObject *last = k->bindings[--k->nbindings];
    k->bindings[i] = last;
    last->slot = i;
    b->slot = -1;
}

/* End a live binding: untag its pages (unless they are about to be unmapped), unlink it
 * from its key and its mapping.  The caller holds a reference to b.  Fails (nothing changed)
 * only if the untagging system call fails. */
static int key_free(KeyObject *k);

/* What binding_end() gives up, handed to its caller.  Dropping a reference can run Python
 * code (a finalizer on the key, often dropped for the last time here; the binding's own
 * deallocator), and so can building the error: the caller finishes its own change first (the
 * release and munmap of close(), every binding of key_free()) and then calls ended_finish().
 * binding_end() raises nothing itself. */
typedef struct {
    KeyObject *key;        /* the binding's reference to its key */
    BindingObject *held;   /* the mapping's reference to the binding */
    BindingObject *ours;   /* the caller's own reference to the binding (it sets this) */
    int err;               /* errno of a failed untag, 0 if none */
    const char *syscall;
} Ended;

/* Drop what binding_end() gave up, keeping the exception being raised (if any); then raise
 * the untag's error, unless one is already being raised.  -1 if the untag failed. */
static int
ended_finish(Ended *e)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    Py_XDECREF(e->key);
    Py_XDECREF(e->held);
    Py_XDECREF(e->ours);
    e->key = NULL;
    e->held = NULL;
    e->ours = NULL;
    if (et != NULL) {
        PyErr_Restore(et, ev, tb);
    }
    else if (e->err != 0) {
        raise_errno(e->err, e->syscall);
    }
    return e->err != 0 ? -1 : 0;
}

/* untag: UNTAG_NO (the pages are about to be unmapped), UNTAG_YES (a failure changes nothing
 * and raises), UNTAG_FORCE (the collector is taking the binding apart: on a failure the
 * binding ends anyway, the pages keep the tag, and the key never gives its number to
 * another key; raises after the binding has ended). */
enum { UNTAG_NO = 0, UNTAG_YES = 1, UNTAG_FORCE = 2 };

static int
binding_end(BindingObject *b, int untag, Ended *out)
{
    out->key = NULL;
    out->held = NULL;
    out->err = 0;
    out->syscall = NULL;
    if (!b->live) {
        return 0;
    }
    KeyObject *k = b->key;
    MappingObject *m = b->mapping;
    int failed_errno = 0;
    const char *call = k->mode == MODE_PKU ? "pkey_mprotect" : "mprotect";
    if (untag != UNTAG_NO && !mapping_absent(m)) {
        long rc = 0;
        /* The collector takes a secure mapping apart: it was wiped, and nobody can use its
         * pages any more (the memory goes in its deallocator): closed, not its own rights. */
        int collected = untag == UNTAG_FORCE && (m->flags & MAP_F_WIPE);
        int prot = collected ? PROT_NONE : m->prot;
        if (k->mode == MODE_PKU) {
            /* back to key 0, so a later key that reuses the number cannot reach the pages
             * (and out of parking: the region's own rights) */
            rc = syscall(SYS_pkey_mprotect, m->addr, m->len, prot, 0);
        }
        else if (k->mode == MODE_MPROTECT || k->mode == MODE_SIM) {
            rc = mprotect((void *)m->addr, m->len, prot);
        }
        if (rc != 0) {
            failed_errno = errno;
            if (untag != UNTAG_FORCE) {
                out->err = failed_errno;
                out->syscall = call;
                return -1;
            }
            if (mode_is_pool(k->mode)) {
                pool_key_leaked(k);
            }
            m->flags |= MAP_F_UNKNOWN; /* the pages kept the key's rights and tag */
        }
        else {
            m->flags &= ~MAP_F_PKU_TAGGED; /* key 0 */
            if (collected) {
                m->prot = PROT_NONE;
            }
        }
    }
    key_remove_binding(k, b);
    fault_table_set_pkey(m->addr, FAULT_PKEY_NONE);
    b->live = 0;
    b->key = NULL;
    BindingObject *held = m->binding;
    m->binding = NULL;
    if (k->autoclose && k->nbindings == 0 && k->active == 0 && !k->closed && !k->closing) {
        /* A library key with nothing left to protect: give the hardware key back. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (key_free(k) < 0) {
            write_unraisable("pkeyguard: freeing a library key");
        }
        PyErr_Restore(et, ev, tb);
    }
    out->key = k;
    out->held = held;
    if (failed_errno != 0) {
        out->err = failed_errno;
        out->syscall = call;
        return -1;
    }
    return 0;
}

/* binding_end() for a caller with nothing left to change: drop and raise at once. */
static int
binding_end_now(BindingObject *b, int untag)
{
    Ended e;
    e.ours = NULL;
    (void)binding_end(b, untag, &e);
    return ended_finish(&e);
}

/* Free the key (after ending its bindings).  Used by close() and by the deallocator. */
static int
key_free(KeyObject *k)
{
    if (k->closing) {
        return 0; /* re-entered from code that a release below ran: the outer call finishes */
    }
    k->closing = 1;
    int failed = 0;
    Ended first = {0}; /* the first failed untag: the error raised */
    /* The references the ended bindings give up (ours on each binding, chained through
     * ended_next; the key's are counted): dropped once the key is closed, since dropping one
     * can run Python code (a binding's deallocator drops its mapping).  The chain lives in the
     * bindings themselves, so it needs no memory that could fail to come. */
    BindingObject *chain = NULL;
    Py_ssize_t key_refs = 0;
    while (k->nbindings > 0) {
        BindingObject *b = k->bindings[k->nbindings - 1];
        Py_INCREF(b);
        Ended e;
        if (binding_end(b, UNTAG_YES, &e) < 0) {
            /* The pages keep the tag: never free the number (a reused number would reach
             * them).  Drop the binding from our list and report the first failure at the
             * end (nothing was raised, so no Python code ran). */
            if (!failed) {
                first = e;
            }
            failed = 1;
            key_remove_binding(k, b);
            if (b->mapping != NULL) {
                b->mapping->flags |= MAP_F_UNKNOWN; /* tagged with a number the key gives up */
            }
        }
        else {
            key_refs += e.key != NULL;
            Py_XDECREF(e.held); /* not the last: ours is held until the end */
        }
        b->ended_next = chain;
        chain = b;
    }
    if (mode_is_pool(k->mode)) {
        k->quarantined = pool_key_close(k, failed);
    }
    k->closed = 1;
    key_unregister(k);
    /* The state is complete: drop the references (the caller holds k, so k's are not its
     * last), then raise the first error. */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    for (; key_refs > 0; key_refs--) {
        Py_DECREF(k);
    }
    while (chain != NULL) {
        BindingObject *b = chain;
        chain = b->ended_next;
        b->ended_next = NULL;
        Py_DECREF(b);
    }
    PyErr_Restore(et, ev, tb);
    first.ours = NULL;
    return ended_finish(&first) < 0 || failed ? -1 : 0;
}

/* A key the library owns on a user's behalf (a Secret's): nothing public hands it out
 * (guard.key, the association's key, isolated()'s value), and nothing may close it, bind it
 * to another region or end its association: closing it would re-tag the secret's pages to
 * key 0 with their own rights (readable outside reveal()), and leave the Secret unusable.
 * It is freed when its one association ends (the Secret closes). */
static inline int
key_owned(KeyObject *k)
{
    return k->autoclose;
}

static PyObject *
refuse_owned(int which, const char *what)
{
    PyErr_Format(err(which),
                 "this key belongs to a Secret and cannot be %s by hand; close the Secret "
                 "instead",
                 what);
    return NULL;
}

static PyObject *
raise_hidden(const char *what)
{
    PyErr_Format(PyExc_AttributeError,
                 "a Secret's %s is not exposed: it is freed with the Secret, and nothing else "
                 "may close or re-tag it",
                 what);
    return NULL;
}

static long long next_key_id = 0;

static PyObject *
Key_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pkey", "mode", "base_level", NULL};
    int pkey, mode, base_level;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iii:Key", kwlist, &pkey, &mode,
                                     &base_level)) {
        return NULL;
    }
    if (mode < MODE_NOP || mode >= MODE_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown key mode %d", mode);
        return NULL;
    }
    if (!rights_level_valid(base_level)) {
        PyErr_Format(PyExc_ValueError, "unknown rights level %d", base_level);
        return NULL;
    }
    if (mode == MODE_PKU && require_pku() < 0) {
        return NULL;
    }
    KeyObject *k = (KeyObject *)type->tp_alloc(type, 0);
    if (k == NULL) {
        return NULL;
    }
    k->id = ++next_key_id;
    (void)pkey; /* the logical number is the core's: unique and never reused */
    k->closed = 1; /* until the key exists: the deallocator then frees nothing */
    k->mode = mode;
    k->base_level = base_level;
    k->effective_level = base_level;
    k->slot.hw = -1;
    if (mode_is_pool(mode) && pool_key_init(k, base_level) < 0) {
        Py_DECREF(k);
        return NULL;
    }
    k->closed = 0;
    if (mode != MODE_NOP) {
        key_register(k);
    }
    return (PyObject *)k;
}

static void
Key_dealloc(KeyObject *k)
{
    if (PyType_IS_GC(Py_TYPE(k))) {
        PyObject_GC_UnTrack(k);
    }
    if (!k->closed) {
        /* No binding or guard can remain (each holds a reference); free the number. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (key_free(k) < 0) {
            write_unraisable("pkeyguard: freeing a protection key");
        }
        PyErr_Restore(et, ev, tb);
    }
    key_unregister(k);
    PyMem_Free(k->bindings);
    k->bindings = NULL;
    Py_TYPE(k)->tp_free((PyObject *)k);
}

/* close(): untag every region, free the key.  Refused while any guard on it is active. */
static PyObject *
Key_close(KeyObject *k, PyObject *Py_UNUSED(ignored))
{
    if (k->closed || k->closing) {
        Py_RETURN_NONE;
    }
    if (key_owned(k)) {
        return refuse_owned(E_KEY, "closed");
    }
    if (k->active > 0) {
        return PyErr_Format(err(E_KEY),
                            "cannot close key %lld: %zd guard(s) on it are still active; leave "
                            "their 'with' blocks first",
                            k->id, k->active);
    }
    if (key_free(k) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Key_get_bindings(KeyObject *k, void *Py_UNUSED(closure))
{
    PyObject *out = PyTuple_New(k->nbindings);
    if (out == NULL) {
        return NULL;
    }
    /* PyTuple_New above may have run the GC; the list cannot change from here on. */
    if (PyTuple_GET_SIZE(out) != k->nbindings) {
        Py_DECREF(out);
        return Key_get_bindings(k, NULL);
    }
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        Py_INCREF(k->bindings[i]);
        PyTuple_SET_ITEM(out, i, (PyObject *)k->bindings[i]);
    }
    return out;
}

static PyObject *
Key_repr(KeyObject *k)
{
    static const char *modes[] = {"nop", "pku", "mprotect", "sim"};
    return PyUnicode_FromFormat("<_core.Key %lld mode=%s hw=%d active=%zd regions=%zd%s>", k->id,
                                modes[k->mode], k->slot.hw, k->active, k->nbindings,
                                k->closed ? " closed" : "");
}

static PyObject *Key_bind(KeyObject *k, PyObject *args);
static PyObject *Key_guard(KeyObject *k, PyObject *arg);

/* _thread_level(): this thread's rights through the key now (pku/sim: its number's PKRU bits,
 * none while parked; mprotect: the process-wide level). */
static PyObject *
Key_thread_level(KeyObject *k, PyObject *Py_UNUSED(ignored))
{
    if (mode_is_pool(k->mode)) {
        if (k->mode == MODE_PKU && require_pku() < 0) {
            return NULL;
        }
        if (k->slot.hw < 0) {
            return PyLong_FromLong(LEVEL_NONE);
        }
        unsigned bits = arch_rights_get(pool_rdpkru(k->mode), k->slot.hw);
        return PyLong_FromLong(rights_level_of_bits(bits));
    }
    return PyLong_FromLong(k->effective_level);
}

static PyObject *
Key_get_hardware_key(KeyObject *k, void *Py_UNUSED(closure))
{
    if (!mode_is_pool(k->mode) || k->slot.hw < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(k->slot.hw);
}

static PyObject *
Key_set_autoclose(KeyObject *k, PyObject *Py_UNUSED(ignored))
{
    k->autoclose = 1;
    Py_RETURN_NONE;
}

static PyMethodDef Key_methods[] = {
    {"_set_autoclose", (PyCFunction)Key_set_autoclose, METH_NOARGS,
     "Free the key as soon as its last association ends (library-owned keys)."},
    {"_bind", (PyCFunction)Key_bind, METH_VARARGS,
     "_bind(mapping, cls): tag the mapping's pages with this key; returns the binding."},
    {"_close", (PyCFunction)Key_close, METH_NOARGS,
     "Untag every region, then free the key (idempotent; refused while guards are active)."},
    {"_guard", (PyCFunction)Key_guard, METH_O,
     "_guard(level): a key-wide guard (no views), for benchmarks floors."},
    {"_thread_level", (PyCFunction)Key_thread_level, METH_NOARGS,
     "This thread's rights level through the key now."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Key_members[] = {
    {"key", T_LONGLONG, offsetof(KeyObject, id), READONLY,
     "the logical key number: unique in the process, never reused"},
    {"_pinned", T_BOOL, offsetof(KeyObject, slot.pinned), READONLY, NULL},
    {"_opening", T_PYSSIZET, offsetof(KeyObject, slot.opening), READONLY, NULL},
    {"_mode", T_INT, offsetof(KeyObject, mode), READONLY, NULL},
    {"_base_level", T_INT, offsetof(KeyObject, base_level), READONLY, NULL},
    {"_effective_level", T_INT, offsetof(KeyObject, effective_level), READONLY, NULL},
    {"_mixed", T_BOOL, offsetof(KeyObject, mixed), READONLY,
     "a failed system call left some regions at other rights than the key's level"},
    {"active_guards", T_PYSSIZET, offsetof(KeyObject, active), READONLY,
     "guards on this key active right now, on all threads"},
    {"closed", T_BOOL, offsetof(KeyObject, closed), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Key_getset[] = {
    {"_bindings", (getter)Key_get_bindings, NULL, "the live bindings", NULL},
    {"hardware_key", (getter)Key_get_hardware_key, NULL,
     "the hardware key number it holds now (pku), or None: parked, or not a pku key", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Key_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_repr = (reprfunc)Key_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A protection key (internal base of PkeyGuard).",
    .tp_methods = Key_methods,
    .tp_members = Key_members,
    .tp_getset = Key_getset,
    .tp_new = Key_new,
};

/* ------------------------------------------------------------------------------------ */
/* Mapping                                                                              */

static MappingObject wipe_list = {.wipe_prev = &wipe_list, .wipe_next = &wipe_list};

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
static volatile unsigned long fork_count = 0;

static int
mapping_inherited(MappingObject *m)
{
    return m->forks != fork_count || m->pid != getpid();
}

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
    if ((m->flags & MAP_F_SECRETMEM) && m->forks == fork_count && m->pid != getpid()) {
        m->flags |= MAP_F_LOST;
        return 1;
    }
    return 0;
}

static void fork_child_expire_secure_views(void);
static void held_fork_child(void);
static int fork_child_writing(MappingObject *m);

/* Secure memory (zeroed on release, wiped or left out on fork) that a fork child inherited:
 * its bytes did not come along (zero pages, or a hole), so nothing may read or write it as
 * if it held the parent's secret.  Checked when a guard or view over it is used, not only
 * when it is made: a guard made before the fork can be entered after it. */
static int
mapping_secure_inherited(MappingObject *m)
{
    return (m->flags & (MAP_F_WIPE | MAP_F_WIPEONFORK | MAP_F_SECRETMEM)) && m->base != 0 &&
           mapping_inherited(m);
}

static const char secret_unavailable_msg[] =
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

/* pthread_atfork child handler: only system calls, and the wipe list is stable (it changes
 * with the GIL held, and fork() runs with the GIL held).  Every inherited secure mapping is
 * closed (see mapping_close_inherited); secret memory holes are filled with closed zero pages
 * first. */
static void
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
        if ((m->base != 0 || m->releasing != 0) && (m->flags & MAP_F_SECRETMEM)) {
            mapping_fill_hole(m);
        }
        else if (m->base != 0) {
            mapping_close_inherited(m);
        }
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
    if (d.pkey > 0 && pku_enabled) { /* a pku key holding a number (0: parked, key 0) */
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
    if (!(m->flags & MAP_F_SECRETMEM)) {
        /* Private pages: dropped (locked ones must be unlocked first); if the kernel refuses,
         * replaced like secret memory below. */
        if (!(m->flags & MAP_F_LOCKED) ||
            syscall(SYS_munlock, (void *)m->addr, m->len) == 0) {
            m->flags &= ~MAP_F_LOCKED;
            if (madvise((void *)m->addr, m->len, MADV_DONTNEED) == 0) {
                return 0;
            }
        }
    }
    /* Secret memory cannot be discarded while mapped (no MADV_DONTNEED, no hole punch): a
     * fresh private mapping replaces it, and the kernel zeroes the pages it frees. */
    void *p = mmap((void *)m->addr, m->len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        *what = "mmap";
        return errno;
    }
    m->flags &= ~MAP_F_LOCKED;
    (void)madvise(p, m->len, MADV_DONTDUMP);
    if (m->flags & MAP_F_SECRETMEM) {
        (void)madvise(p, m->len, MADV_DONTFORK); /* still a hole in a fork child */
    }
    if (pkey >= 0 && syscall(SYS_pkey_mprotect, m->addr, m->len, prot, pkey) != 0) {
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
static int
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
            syscall(SYS_pkey_mprotect, m->addr, m->len, prot | rw, pkey) != 0) {
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
            syscall(SYS_pkey_mprotect, m->addr, m->len, prot, pkey) != 0) {
            *what = "pkey_mprotect"; /* zeros, open to this key's number only */
            return errno;
        }
        return 0;
    }
closed:
    if (check && known && pkey < 0 && (prot & PROT_READ)) {
        canary_compare(m, (const void *)(m->addr + m->size)); /* every thread can read it */
    }
    else if (check && !(m->flags & MAP_F_SECRETMEM)) {
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
    if (e != 0 || (m->flags & MAP_F_SECRETMEM)) {
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
static void
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
            dontfork = (m->flags & MAP_F_SECRETMEM) != 0;
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
        held_add(m, base, (m->flags & MAP_F_SECRETMEM) != 0);
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
static int
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
static void
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

static int
raise_canary(MappingObject *m)
{
    PyErr_Format(err(E_CANARY),
                 "the canary after a secure region's %zu-byte value was overwritten: something "
                 "wrote past the end of the value (the memory was wiped and unmapped anyway)",
                 m->size);
    return -1;
}

static PyObject *
Mapping_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "prot", "fmt", "swap", "ctype", "view_types", "label",
                             "guard_pages", "lock", "dontdump", "wipeonfork", "canary_size",
                             "wipe", "on_release", "secretmem", NULL};
    Py_ssize_t size, canary_size = 0;
    int prot, fmt = 's', swap = 0, guard_pages = 0, lock = 0, dontdump = 0, wipeonfork = 0,
        wipe = 0, secretmem = 0;
    PyObject *ctype = Py_None, *view_types, *on_release = Py_None;
    const char *label = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ni|$CpOO!sppppnpOp:Mapping", kwlist, &size,
                                     &prot, &fmt, &swap, &ctype, &PyTuple_Type, &view_types,
                                     &label, &guard_pages, &lock, &dontdump, &wipeonfork,
                                     &canary_size, &wipe, &on_release, &secretmem)) {
        return NULL;
    }
    if (size <= 0 || (size_t)size > MAX_REGION_SIZE) {
        PyErr_Format(err(E_REGION), "region size must be within 1..%zu, got %zd",
                     MAX_REGION_SIZE, size);
        return NULL;
    }
    if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) {
        PyErr_Format(PyExc_ValueError, "bad page rights %d", prot);
        return NULL;
    }
    if (canary_size < 0 || canary_size > CANARY_MAX) {
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
    size_t page = (size_t)page_size;
    size_t len = ((size_t)size + (size_t)canary_size + page - 1) / page * page;
    /* A PROT_NONE page on each side: a guard page, or for a region without guard pages a
     * spacer, so that the region's pages are a mapping entry of their own (see "Spacers"). */
    size_t total = len + 2 * page;
    void *base = mmap(NULL, total, guard_pages ? PROT_NONE : PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        raise_errno(errno, "mmap");
        Py_DECREF(m);
        return NULL;
    }
    uintptr_t addr = (uintptr_t)base + page;
    if (secretmem) {
        wipe = 1; /* on the wipe list: fork_child() finds it there */
    }
    int flags = (wipe ? MAP_F_WIPE : 0) | (guard_pages ? MAP_F_GUARDED : 0);
    const char *failed = NULL;
    int e = 0;
    if (secretmem) {
        /* memfd_secret(2): pages removed from the kernel's direct map, locked (they count
         * against RLIMIT_MEMLOCK) and left out of core dumps by the kernel.  They replace the
         * usable pages of the reservation; the descriptor is closed at once (the mapping
         * keeps the memory) and never leaves this call. */
#ifdef SYS_memfd_secret
        int fd = (int)syscall(SYS_memfd_secret, O_CLOEXEC);
#else
        int fd = -1;
        errno = ENOSYS;
#endif
        if (fd < 0) {
            failed = "memfd_secret";
            goto fail;
        }
        if (ftruncate(fd, (off_t)len) != 0) {
            e = errno;
            (void)close(fd);
            errno = e;
            failed = "ftruncate";
            goto fail;
        }
        void *p = mmap((void *)addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        e = errno;
        (void)close(fd);
        errno = e;
        if (p == MAP_FAILED) {
            failed = "mmap";
            goto fail;
        }
        flags |= MAP_F_SECRETMEM;
        e = secretmem_populate(addr, len);
        if (e != 0) {
            /* EFAULT: the kernel would not back a page.  Other kernels refuse the same
             * request at mmap (EAGAIN over RLIMIT_MEMLOCK): report it the same way. */
            struct rlimit rl;
            int limited = getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY;
            errno = e != EFAULT ? e : limited ? EAGAIN : ENOMEM;
            failed = "mmap";
            goto fail;
        }
        if (madvise(base, total, MADV_DONTFORK) != 0) {
            failed = "madvise";
            goto fail;
        }
        lock = wipeonfork = 0; /* locked by the kernel; WIPEONFORK is for private pages */
    }
    else if (guard_pages && mprotect((void *)addr, len, PROT_READ | PROT_WRITE) != 0) {
        failed = "mprotect";
        goto fail;
    }
    if (!guard_pages && (mprotect(base, page, PROT_NONE) != 0 ||
                         mprotect((void *)(addr + len), page, PROT_NONE) != 0)) {
        failed = "mprotect";
        goto fail;
    }
    if (dontdump) {
        if (madvise(base, total, MADV_DONTDUMP) == 0) {
            flags |= MAP_F_DONTDUMP;
        }
        else if (errno != EINVAL) { /* EINVAL: this kernel lacks the advice */
            failed = "madvise";
            goto fail;
        }
    }
    else if ((madvise(base, page, MADV_DONTDUMP) != 0 ||
              madvise((void *)(addr + len), page, MADV_DONTDUMP) != 0) &&
             errno != EINVAL) {
        /* the side pages differ from the region's in a flag: never merged with it */
        failed = "madvise";
        goto fail;
    }
    if (wipeonfork) {
        if (madvise((void *)addr, len, MADV_WIPEONFORK) == 0) {
            flags |= MAP_F_WIPEONFORK;
        }
        else if (errno != EINVAL) {
            failed = "madvise";
            goto fail;
        }
    }
    if (lock) {
        /* The raw system call: ASan makes libc's mlock() a no-op. */
        if (syscall(SYS_mlock, (void *)addr, len) != 0) {
            failed = "mlock";
            goto fail;
        }
        flags |= MAP_F_LOCKED;
    }
    if (canary_size > 0) {
        ssize_t got = 0;
        while (got < canary_size) {
            /* The system call, not glibc's getrandom() (2.25): the wheel stays manylinux2014. */
            long n = syscall(SYS_getrandom, m->canary + got, (size_t)(canary_size - got), 0);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                failed = "getrandom";
                goto fail;
            }
            got += n;
        }
        memcpy((void *)(addr + (size_t)size), m->canary, (size_t)canary_size);
    }
    if (prot != (PROT_READ | PROT_WRITE) && mprotect((void *)addr, len, prot) != 0) {
        failed = "mprotect";
        goto fail;
    }
    m->base = (uintptr_t)base;
    m->total = total;
    m->addr = addr;
    m->len = len;
    m->size = (size_t)size;
    m->prot = prot;
    m->flags = flags;
    m->pid = getpid();
    m->forks = fork_count;
    m->canary_len = canary_size;
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
    fault_table_add(addr, len, label);
    if (wipe) {
        wipe_register(m);
    }
    return (PyObject *)m;
fail:
    e = errno;
    if (flags & MAP_F_LOCKED) {
        (void)syscall(SYS_munlock, (void *)addr, len);
    }
    (void)munmap(base, total);
    raise_errno(e, failed);
    Py_DECREF(m);
    return NULL;
}

static int
Mapping_traverse(MappingObject *m, visitproc visit, void *arg)
{
    Py_VISIT(m->binding);
    Py_VISIT(m->on_release);
    Py_VISIT(m->view_types);
    Py_VISIT(m->ctype);
    return 0;
}

static int
Mapping_clear(MappingObject *m)
{
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
Mapping_dealloc(MappingObject *m)
{
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
Mapping_close(MappingObject *m, PyObject *Py_UNUSED(ignored))
{
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
Mapping_protect(MappingObject *m, PyObject *arg)
{
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
Mapping_get_address(MappingObject *m, void *Py_UNUSED(c))
{
    if (mapping_check_open(m) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)m->addr);
}

static PyObject *
Mapping_get_mapped_size(MappingObject *m, void *Py_UNUSED(c))
{
    if (mapping_check_open(m) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(m->len);
}

static PyObject *
Mapping_get_size(MappingObject *m, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(m->size);
}

static PyObject *
Mapping_get_closed(MappingObject *m, void *Py_UNUSED(c))
{
    return PyBool_FromLong(m->base == 0);
}

static PyObject *
Mapping_get_prot(MappingObject *m, void *Py_UNUSED(c))
{
    return PyLong_FromLong(m->prot);
}

static PyObject *
Mapping_get_inherited(MappingObject *m, void *Py_UNUSED(c))
{
    return PyBool_FromLong(m->base != 0 && mapping_inherited(m));
}

static PyObject *
Mapping_get_binding(MappingObject *m, void *Py_UNUSED(c))
{
    if (m->binding == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(m->binding);
    return (PyObject *)m->binding;
}

static PyObject *
Mapping_get_advice(MappingObject *m, void *Py_UNUSED(c))
{
    int f = m->flags;
    return Py_BuildValue("{sOsOsOsOsOsO}", "dontdump", (f & MAP_F_DONTDUMP) ? Py_True : Py_False,
                         "wipeonfork", (f & MAP_F_WIPEONFORK) ? Py_True : Py_False,
                         "locked", (f & (MAP_F_LOCKED | MAP_F_SECRETMEM)) ? Py_True : Py_False,
                         "guard_pages", (f & MAP_F_GUARDED) ? Py_True : Py_False,
                         "secretmem", (f & MAP_F_SECRETMEM) ? Py_True : Py_False,
                         "dontfork", (f & MAP_F_SECRETMEM) ? Py_True : Py_False);
}

static PyMethodDef Mapping_methods[] = {
    {"close", (PyCFunction)Mapping_close, METH_NOARGS,
     "Unmap the memory (zeroed first for secure regions); a second call does nothing.\n\n"
     "Refused while a guard of the region's association is active (on any thread)."},
    {"_protect", (PyCFunction)Mapping_protect, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mapping_getset[] = {
    {"address", (getter)Mapping_get_address, NULL, "Address of the first byte (page-aligned).",
     NULL},
    {"mapped_size", (getter)Mapping_get_mapped_size, NULL,
     "Bytes mapped: the size rounded up to whole pages.", NULL},
    {"size", (getter)Mapping_get_size, NULL, "Size of the value in bytes.", NULL},
    {"closed", (getter)Mapping_get_closed, NULL, NULL, NULL},
    {"_prot", (getter)Mapping_get_prot, NULL, NULL, NULL},
    {"_binding", (getter)Mapping_get_binding, NULL, NULL, NULL},
    {"_advice", (getter)Mapping_get_advice, NULL, NULL, NULL},
    {"_inherited", (getter)Mapping_get_inherited, NULL,
     "mapped by the parent before a fork: the bytes did not come along", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Mapping_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Mapping",
    .tp_basicsize = sizeof(MappingObject),
    .tp_dealloc = (destructor)Mapping_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Page-aligned memory owned by the core (internal base of RegionGuard).",
    .tp_traverse = (traverseproc)Mapping_traverse,
    .tp_clear = (inquiry)Mapping_clear,
    .tp_methods = Mapping_methods,
    .tp_getset = Mapping_getset,
    .tp_new = Mapping_new,
};

/* ------------------------------------------------------------------------------------ */
/* Guard (declarations needed by Binding)                                              */


/* Fork child (from fork_child, so only memory writes): the forking thread keeps its guards,
 * but a guard over secure memory (WIPEONFORK or memfd_secret) now covers zero pages, so the
 * views it handed out must not read them as if they were the secret: a new generation
 * expires them, and view_check says why.  The guards stay active, so the 'with' blocks still
 * exit normally in the child; a memoryview taken before the fork is a leftover export, as
 * after any guard's exit. */
static void
fork_child_expire_secure_views(void)
{
    for (GuardObject *g = tls_stack != NULL ? tls_stack->top : NULL; g != NULL; g = g->prev) {
        MappingObject *m = g->binding != NULL ? g->binding->mapping : NULL;
        if (m != NULL && (m->flags & (MAP_F_WIPEONFORK | MAP_F_SECRETMEM))) {
            g->generation++;
            g->exports = 0; /* the old activation's exports no longer count (their releases
                               see the old generation and leave this count alone) */
        }
    }
}


/* Fork child: whether the forking thread holds an active write guard over m.  Only the
 * thread's guards on m's key are looked at (its root on the key, then the same-key chain):
 * a walk of the whole stack for each secure mapping made a fork inside N nested guards over
 * N secrets O(N^2) in the child's handler. */
static int
fork_child_writing(MappingObject *m)
{
    BindingObject *b = m->binding;
    if (b == NULL || b->key == NULL || tls_stack == NULL) {
        return 0; /* a guard holds its binding: none is active over an unbound mapping */
    }
    GuardObject *r = key_thread_root(b->key, tls_stack);
    for (GuardObject *g = r != NULL ? r->innermost : NULL; g != NULL; g = g->same_outer) {
        walk_steps++;
        if (g->level == LEVEL_WRITE && g->binding != NULL && g->binding->mapping == m) {
            return 1;
        }
    }
    return 0;
}

/* The rights members and guard classes, registered by pkeyguard at import. */
static PyObject *rights_members[LEVEL_COUNT];
static PyTypeObject *guard_types[LEVEL_COUNT];

/* Recycled guard memory.  set_access_rights() returns a new guard on every call (callers
 * must never share one), so its cost is an allocation and, when the caller drops the guard,
 * a deallocation.  A dropped guard of a registered class keeps its memory here instead, and
 * the next guard of that class is built in it: a new object (refcount 1, fields zeroed)
 * that nobody else can hold, since the old one was unreachable when it was freed.  Only
 * classes whose instances are exactly a GuardObject behind a GC header qualify (checked at
 * registration).  Protected by the GIL. */
#define GUARD_FREELIST_MAX 8
static GuardObject *guard_free[LEVEL_COUNT][GUARD_FREELIST_MAX];
static int guard_nfree[LEVEL_COUNT];
static int guard_recyclable[LEVEL_COUNT];

static int
guard_type_recyclable(PyTypeObject *t)
{
    unsigned long managed = 0;
#ifdef Py_TPFLAGS_MANAGED_DICT
    managed |= Py_TPFLAGS_MANAGED_DICT;
#endif
#ifdef Py_TPFLAGS_MANAGED_WEAKREF
    managed |= Py_TPFLAGS_MANAGED_WEAKREF;
#endif
    return PyType_IS_GC(t) && (t->tp_flags & Py_TPFLAGS_HEAPTYPE) && !(t->tp_flags & managed) &&
           t->tp_basicsize == Guard_Type.tp_basicsize && t->tp_itemsize == 0 &&
           t->tp_dictoffset == 0 && t->tp_weaklistoffset == 0 && t->tp_finalize == NULL &&
           t->tp_del == NULL && t->tp_alloc == PyType_GenericAlloc &&
           t->tp_free == PyObject_GC_Del;
}

static void
guard_freelist_drain(void)
{
    for (int level = 0; level < LEVEL_COUNT; level++) {
        while (guard_nfree[level] > 0) {
            PyObject_GC_Del(guard_free[level][--guard_nfree[level]]);
        }
    }
}

static GuardObject *
guard_alloc(PyTypeObject *cls, int level)
{
    if (cls == guard_types[level] && guard_nfree[level] > 0) {
        GuardObject *g = guard_free[level][--guard_nfree[level]];
        memset((char *)g + sizeof(PyObject), 0, sizeof(GuardObject) - sizeof(PyObject));
        (void)PyObject_Init((PyObject *)g, cls); /* refcount 1, holds its heap type */
        PyObject_GC_Track(g);
        return g;
    }
    return (GuardObject *)cls->tp_alloc(cls, 0);
}

/* From the deallocator, after the fields are cleared: 1 if g's memory was kept. */
static int
guard_recycle(GuardObject *g)
{
    int level = g->level;
    if (level < 0 || level >= LEVEL_COUNT || Py_TYPE(g) != guard_types[level] ||
        !guard_recyclable[level] || guard_nfree[level] >= GUARD_FREELIST_MAX ||
        Py_TYPE(g)->tp_finalize != NULL || PyObject_GC_IsTracked((PyObject *)g) ||
        PyObject_GC_IsFinalized((PyObject *)g)) {
        /* finalized: the GC header keeps that bit, and a guard recycled with it would never
         * run a __del__ set on its class later */
        return 0;
    }
    guard_free[level][guard_nfree[level]++] = g;
    return 1;
}

static void Guard_dealloc(GuardObject *g);

/* The deallocator of the registered guard classes.  CPython gives a Python class
 * subtype_dealloc, which walks the bases, checks for finalizers, weak references, __dict__
 * and __slots__, and guards against deep recursion, on every guard that set_access_rights()
 * made and its caller dropped.  The registered classes have no weak references, __dict__ or
 * __slots__ (checked at registration).  A __del__ can still be set on the class later: it
 * runs here as subtype_dealloc would run it. */
static void
guard_class_dealloc(GuardObject *g)
{
    if (Py_TYPE(g)->tp_finalize != NULL &&
        PyObject_CallFinalizerFromDealloc((PyObject *)g) < 0) {
        return; /* the finalizer resurrected it */
    }
    PyTypeObject *t = Py_TYPE(g); /* read again: a finalizer may have changed it */
    PyObject_GC_UnTrack(g);
    Guard_dealloc(g);
    Py_DECREF(t); /* an instance of a heap type holds its type */
}

static GuardObject *
guard_create(PyTypeObject *cls, KeyObject *k, BindingObject *b, int level, PyObject *enter_view)
{
    GuardObject *g = guard_alloc(cls, level);
    if (g == NULL) {
        return NULL;
    }
    Py_INCREF(k);
    g->key = k;
    Py_XINCREF(b);
    g->binding = b;
    Py_XINCREF(enter_view);
    g->enter_view = enter_view;
    g->level = level;
    g->saved_level = -1;
    g->hw = -1;
    return g;
}

static int
level_of_rights(PyObject *rights)
{
    for (int i = 0; i < LEVEL_COUNT; i++) {
        if (rights == rights_members[i] && rights != NULL) {
            return i;
        }
    }
    PyErr_Format(err(E_ARGTYPE), "rights must be a PkeyPermissions member, not %R", rights);
    return -1;
}

/* ------------------------------------------------------------------------------------ */
/* Binding                                                                              */

/* _bind(mapping, cls): the one way to associate a region with a key.  Tags the pages and
 * links key, binding and mapping in one step. */
static PyObject *
Key_bind(KeyObject *k, PyObject *args)
{
    PyObject *mobj;
    PyTypeObject *cls;
    if (!PyArg_ParseTuple(args, "O!O!:_bind", &Mapping_Type, &mobj, &PyType_Type, &cls)) {
        return NULL;
    }
    if (!PyType_IsSubtype(cls, &Binding_Type)) {
        PyErr_SetString(PyExc_TypeError, "_bind() needs a Binding subtype");
        return NULL;
    }
    MappingObject *m = (MappingObject *)mobj;
    /* Allocate first (this can run the GC and so finalizers), then check, then change. */
    BindingObject *b = (BindingObject *)cls->tp_alloc(cls, 0);
    if (b == NULL) {
        return NULL;
    }
    if (key_reserve(k) < 0) {
        goto fail;
    }
    if (k->closed || k->closing) {
        PyErr_Format(err(E_KEY), "%R is closed", (PyObject *)k);
        goto fail;
    }
    if (key_owned(k) && k->nbindings > 0) {
        refuse_owned(E_KEY, "associated with another region");
        goto fail;
    }
    if (m->base == 0) {
        PyErr_Format(err(E_REGION), "cannot associate %R: it is closed", mobj);
        goto fail;
    }
    if (m->binding != NULL) {
        KeyObject *other = m->binding->key;
        if (other == k) {
            PyErr_Format(err(E_REGION),
                         "%R is already associated with this key; disassociate() it first", mobj);
        }
        else {
            PyErr_Format(err(E_REGION),
                         "%R is already associated with key %lld; disassociate() it first",
                         mobj, other->id);
        }
        goto fail;
    }
    /* nothing to tag on nop, or if nothing of it is here */
    if (k->mode != MODE_NOP && !mapping_absent(m)) {
        PagePlan d = page_plan(k, m->prot);
        if (page_plan_apply(m, d) != 0) {
            raise_errno(errno, page_plan_syscall(d));
            goto fail;
        }
        if (d.pkey >= 0) {
            m->flags |= MAP_F_PKU_TAGGED;
        }
    }
    Py_INCREF(k);
    b->key = k;
    Py_INCREF(m);
    b->mapping = m;
    b->live = 1;
    Py_INCREF(b);
    m->binding = b;
    b->slot = k->nbindings;
    k->bindings[k->nbindings++] = b;
    fault_table_set_pkey(m->addr, !mode_is_pool(k->mode) ? (int)k->id
                                  : k->slot.hw >= 0           ? k->slot.hw
                                                         : FAULT_PKEY_PARKED);
    return (PyObject *)b;
fail:
    Py_DECREF(b);
    return NULL;
}

static int
Binding_traverse(BindingObject *b, visitproc visit, void *arg)
{
    Py_VISIT(b->key);
    Py_VISIT(b->mapping);
    return 0;
}

static int
Binding_clear(BindingObject *b)
{
    if (b->live) {
        mapping_collect_wipe(b->mapping); /* garbage too: it holds this binding */
        Py_INCREF(b);
        if (binding_end_now(b, UNTAG_FORCE) < 0) {
            write_unraisable("pkeyguard: untagging a collected association");
        }
        Py_DECREF(b);
    }
    Py_CLEAR(b->mapping);
    return 0;
}

static void
Binding_dealloc(BindingObject *b)
{
    PyObject_GC_UnTrack(b);
    /* A live binding is held by its mapping: none reaches its deallocator live. */
    Py_CLEAR(b->key);
    Py_CLEAR(b->mapping);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *
binding_new_guard(BindingObject *b, int level, PyTypeObject *cls, PyObject *enter_view)
{
    if (!b->live) {
        return PyErr_Format(err(E_REGION),
                            "%R is no longer associated with a key: associate the region again "
                            "and use the new association",
                            (PyObject *)b->mapping);
    }
    return (PyObject *)guard_create(cls, b->key, b, level, enter_view);
}

/* set_access_rights(rights): a new guard (never shared) of the class for those rights. */
static PyObject *
Binding_set_access_rights(BindingObject *b, PyObject *rights)
{
    int level = level_of_rights(rights);
    if (level < 0) {
        return NULL;
    }
    PyTypeObject *cls = guard_types[level];
    if (cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pkeyguard guard classes are not registered");
        return NULL;
    }
    return binding_new_guard(b, level, cls, NULL);
}

/* _guard(level, cls, view_cls=None): a guard of class cls; with view_cls, its __enter__
 * returns a new view of that type (Secret.reveal). */
static PyObject *
Binding_guard(BindingObject *b, PyObject *args)
{
    int level;
    PyTypeObject *cls;
    PyObject *view_cls = Py_None;
    if (!PyArg_ParseTuple(args, "iO!|O:_guard", &level, &PyType_Type, &cls, &view_cls)) {
        return NULL;
    }
    if (!rights_level_valid(level)) {
        return PyErr_Format(PyExc_ValueError, "unknown rights level %d", level);
    }
    if (!PyType_IsSubtype(cls, &Guard_Type)) {
        PyErr_SetString(PyExc_TypeError, "_guard() needs a Guard subtype");
        return NULL;
    }
    if (view_cls != Py_None &&
        (!PyType_Check(view_cls) || !PyType_IsSubtype((PyTypeObject *)view_cls, &View_Type))) {
        PyErr_SetString(PyExc_TypeError, "view_cls must be a View subtype");
        return NULL;
    }
    return binding_new_guard(b, level, cls, view_cls == Py_None ? NULL : view_cls);
}

/* _unbind(): untag the pages (back to key 0 and the region's own rights).  Refused while a
 * guard of this association is active. */
static PyObject *
Binding_unbind(BindingObject *b, PyObject *Py_UNUSED(ignored))
{
    if (!b->live) {
        return PyErr_Format(err(E_REGION), "%R is no longer associated with a key",
                            (PyObject *)b->mapping);
    }
    if (key_owned(b->key)) {
        return refuse_owned(E_REGION, "disassociated");
    }
    if (b->active > 0) {
        return PyErr_Format(err(E_REGION),
                            "cannot detach %R from key %lld: %zd guard(s) on its association "
                            "are still active; leave their 'with' blocks first",
                            (PyObject *)b->mapping, b->key->id, b->active);
    }
    if (binding_end_now(b, UNTAG_YES) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Binding_get_key(BindingObject *b, void *Py_UNUSED(c))
{
    if (b->key == NULL) {
        Py_RETURN_NONE;
    }
    if (key_owned(b->key)) {
        return raise_hidden("key");
    }
    Py_INCREF(b->key);
    return (PyObject *)b->key;
}

static PyObject *
Binding_get_mapping(BindingObject *b, void *Py_UNUSED(c))
{
    if (b->mapping == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(b->mapping);
    return (PyObject *)b->mapping;
}

static PyObject *Binding_end_stuck(BindingObject *b, PyObject *arg);

static PyMethodDef Binding_methods[] = {
    {"set_access_rights", (PyCFunction)Binding_set_access_rights, METH_O,
     "A new guard that, inside ``with``, gives this thread ``rights`` to the key's memory.\n\n"
     "Entering writes PKRU (pku) or re-protects the key's regions (mprotect); leaving restores\n"
     "exactly what entering changed.  Guards nest (LIFO) and are bound to the thread that\n"
     "entered them.  Each call returns a new guard, which may be entered again once it has\n"
     "exited (never twice at once)."},
    {"_guard", (PyCFunction)Binding_guard, METH_VARARGS, NULL},
    {"_unbind", (PyCFunction)Binding_unbind, METH_NOARGS, NULL},
    {"_end_stuck", (PyCFunction)Binding_end_stuck, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Binding_members[] = {
    {"associated", T_BOOL, offsetof(BindingObject, live), READONLY,
     "whether the region is still tagged with the key"},
    {"_active", T_PYSSIZET, offsetof(BindingObject, active), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Binding_getset[] = {
    {"_key", (getter)Binding_get_key, NULL, NULL, NULL},
    {"_mapping", (getter)Binding_get_mapping, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Binding_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Binding",
    .tp_basicsize = sizeof(BindingObject),
    .tp_dealloc = (destructor)Binding_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A region tagged with a key (internal base of AssociatedRegion).",
    .tp_traverse = (traverseproc)Binding_traverse,
    .tp_clear = (inquiry)Binding_clear,
    .tp_methods = Binding_methods,
    .tp_members = Binding_members,
    .tp_getset = Binding_getset,
};

/* ------------------------------------------------------------------------------------ */
/* Guard                                                                                */
/*
 * Entering and leaving change the core's state (this thread's stack, the key's counts, the
 * pool, the pages).  Nothing between the start of such a change and its end may run Python
 * code: no exception is built there (an error class's __init__, a repr, the allocation of
 * the exception, which can start the collector), and no reference that may be the last is
 * dropped there (a finalizer).  So the steps below report a failure as a GuardFailure, which
 * the caller raises once the state is consistent again, and the references that popped
 * guards give up are collected in a Released list that the caller drops at the very end.
 */

/* Why an entry (or a switch) could not be made; raised by raise_failure(). */
enum {
    FAIL_NONE = 0,
    FAIL_ACTIVE,        /* already active */
    FAIL_KEY_CLOSED,    /* its key is closed, or being closed */
    FAIL_UNBOUND,       /* its association has ended */
    FAIL_EXPORTS,       /* a wider guard on the key has live buffer exports */
    FAIL_ERRNO,         /* a system call failed (err, syscall) */
    FAIL_TAKE,          /* no hardware key could be taken (pool_take's result in err) */
    FAIL_INHERITED,     /* its region is secure memory a fork child inherited */
};

typedef struct {
    int why;
    int err;
    const char *syscall;
    GuardObject *other; /* FAIL_EXPORTS: the guard whose views have exports (borrowed) */
    Py_ssize_t exports;
} GuardFailure;

/* The references popped guards give up (their stack's), dropped once the state is
 * consistent: dropping one can run a finalizer.  The list is the caller's own memory, so
 * whatever that code does to the guards cannot reach it (a guard's own links can change:
 * the code may enter it again). */
typedef struct {
    GuardObject **items;
    Py_ssize_t n, cap;
    GuardObject *small[8];
} Released;

static void
released_init(Released *r)
{
    r->items = r->small;
    r->n = 0;
    r->cap = (Py_ssize_t)(sizeof(r->small) / sizeof(r->small[0]));
}

/* Room for `need` more guards.  PyMem_Malloc runs no Python code (it never starts the
 * collector), so it may come right before a change; on failure nothing was changed. */
static int
released_reserve(Released *r, Py_ssize_t need)
{
    if (r->n + need <= r->cap) {
        return 0;
    }
    Py_ssize_t cap = r->n + need;
    GuardObject **p = PyMem_Malloc((size_t)cap * sizeof(GuardObject *));
    if (p == NULL) {
        return -1;
    }
    memcpy(p, r->items, (size_t)r->n * sizeof(GuardObject *));
    if (r->items != r->small) {
        PyMem_Free(r->items);
    }
    r->items = p;
    r->cap = cap;
    return 0;
}

/* Drop the references, keeping the exception being raised (if any). */
static void
released_drop(Released *r)
{
    if (r->n > 0) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        for (Py_ssize_t i = 0; i < r->n; i++) {
            Py_DECREF(r->items[i]);
        }
        PyErr_Restore(et, ev, tb);
    }
    if (r->items != r->small) {
        PyMem_Free(r->items);
    }
    released_init(r);
}


/* Guards visited while looking for a thread's guards on a key (roots of other threads, and
 * same-key chains): read by tests through _walk_steps(); key_thread_root() is in _core.h. */
unsigned long long walk_steps = 0;

/* Link g (being pushed on s) under root r (NULL: g is the thread's first guard on k). */
static void
same_key_push(GuardObject *g, GuardObject *r)
{
    KeyObject *k = g->key;
    if (r != NULL) {
        g->root = r;
        g->same_outer = r->innermost;
        r->innermost = g;
        return;
    }
    g->root = g;
    g->same_outer = NULL;
    g->innermost = g;
    g->root_prev = NULL;
    g->root_next = k->roots;
    if (k->roots != NULL) {
        k->roots->root_prev = g;
    }
    k->roots = g;
}

/* Unlink g, the innermost guard on its key of its thread (it is being popped). */
static void
same_key_pop(GuardObject *g)
{
    KeyObject *k = g->key;
    if (g->root == g) {
        if (g->root_prev != NULL) {
            g->root_prev->root_next = g->root_next;
        }
        else {
            k->roots = g->root_next;
        }
        if (g->root_next != NULL) {
            g->root_next->root_prev = g->root_prev;
        }
        g->root_prev = g->root_next = NULL;
        g->innermost = NULL;
    }
    else {
        g->root->innermost = g->same_outer;
    }
    g->root = NULL;
    g->same_outer = NULL;
}


/* Apply g's rights for its key on entry, on the thread that owns stack s.  Raises nothing:
 * on failure *f says why, and everything is as before (the caller raises). */
static int
guard_apply(GuardObject *g, ThreadStack *s, GuardObject *outer, GuardFailure *f)
{
    KeyObject *k = g->key;
    if (mode_is_pool(k->mode)) {
        int mode = k->mode;
        KeyPool *p = &pools[mode];
        if (tls_epoch[mode] != p->epoch) {
            pool_sync(mode, s);
        }
        if (k->slot.hw < 0) {
            if (g->level == LEVEL_NONE) {
                g->hw = -1; /* parked: closed to every thread already */
                p->hits++;
                return 0;
            }
            const char *syscall_name;
            int e = pool_take(k, 1, &syscall_name);
            if (e != 0) {
                f->why = FAIL_TAKE;
                f->err = e;
                f->syscall = syscall_name;
                return -1;
            }
            p->misses++;
            tls_epoch[mode] = p->epoch; /* only k's number changed, and it is closed here */
        }
        else {
            p->hits++;
        }
        pool_touch(p, &k->slot);
        int h = k->slot.hw;
        pkey_reg_t pkru = pool_rdpkru(mode);
        pkey_reg_t want = arch_rights_set(pkru, h, RIGHTS[g->level].bits);
        g->hw = h;
        g->saved_bits = (int)arch_rights_get(pkru, h);
        if (want != pkru) {
            pool_wrpkru(mode, want);
        }
        if (g->level != LEVEL_NONE) {
            k->slot.opening++; /* pins the number: never evicted while open somewhere */
        }
        return 0;
    }
    if (k->mode == MODE_MPROTECT) {
        /* outer: this thread's innermost guard on k before g */
        g->saved_level = outer ? outer->level : -1;
        if (outer) {
            k->counts[outer->level]--;
        }
        k->counts[g->level]++;
        int want = key_wanted_level(k);
        int e = want != k->effective_level || k->mixed ? key_apply_level(k, want, APPLY_ATOMIC)
                                                        : 0;
        if (e != 0) {
            k->counts[g->level]--;
            if (outer) {
                k->counts[outer->level]++;
            }
            f->why = FAIL_ERRNO;
            f->err = e;
            f->syscall = "mprotect";
            return -1;
        }
    }
    return 0;
}

/* Undo g's rights: restore exactly the bits (pku) or the level count (mprotect) that its
 * entry changed.  write_pkru: only on the owning thread; apply: 0 while the interpreter
 * finalizes (other threads may still be in native code on those pages).  Returns 0 or the
 * errno of a failed mprotect, and raises nothing.  On a failure, force = 0 changes nothing
 * (g keeps its rights, its pages stay as they were); force = 1 takes g's rights back anyway
 * (see APPLY_FORCE). */
static int
guard_restore(GuardObject *g, int write_pkru, int apply, int force)
{
    KeyObject *k = g->key;
    if (mode_is_pool(k->mode)) {
        if (g->level != LEVEL_NONE) {
            k->slot.opening--;
        }
        /* A NoAccess guard's key may have been parked since (that only closed it further);
         * its number may belong to another key now: leave those bits alone. */
        if (write_pkru && g->hw >= 0 && k->slot.hw == g->hw) {
            pool_set_bits(k->mode, g->hw, (uint32_t)g->saved_bits);
        }
        return 0;
    }
    if (k->mode == MODE_MPROTECT) {
        k->counts[g->level]--;
        if (g->saved_level >= 0) {
            k->counts[g->saved_level]++;
        }
        int want = key_wanted_level(k);
        if (apply && (want != k->effective_level || k->mixed)) {
            int e = key_apply_level(k, want, force ? APPLY_FORCE : APPLY_ATOMIC);
            if (e != 0 && !force) {
                k->counts[g->level]++;
                if (g->saved_level >= 0) {
                    k->counts[g->saved_level]--;
                }
            }
            return e;
        }
    }
    return 0;
}

/* Raise for an exit that could not re-protect the pages of g's key (nothing changed: g is
 * still active, its pages keep its rights). */
static PyObject *
raise_restore_failed(int e)
{
    PyObject *msg = PyUnicode_FromFormat(
        "%s: could not re-protect the key's pages on leaving a guard, so the guard is still "
        "active and its pages keep its rights (nothing was opened further); leave it again "
        "once the cause is gone (ENOMEM at vm.max_map_count: unmap something first)",
        strerror(e));
    if (msg == NULL) {
        return NULL;
    }
    raise_syscall_error(E_MPROTECT, e, msg, "mprotect");
    Py_DECREF(msg);
    return NULL;
}

/* g has left its stack: inactive, counted off its key and binding, its reference moved to r
 * (dropped once the state is consistent). */
static void
guard_retire(GuardObject *g, Released *r)
{
    g->prev = NULL;
    g->depth = 0;
    g->active = 0;
    g->stuck = 0;
    g->stack = NULL;
    g->key->active--;
    if (g->binding != NULL) {
        g->binding->active--;
    }
    r->items[r->n++] = g;
}

/* Take g off the top of its stack and undo its rights.  The stack's reference to g moves to
 * *r, to be dropped once the state is consistent.  The caller has reserved room in r.
 * Returns 0 or an errno (see guard_restore); raises nothing.  On a failure with force = 0
 * nothing changed: g is still on top, active. */
static int
guard_pop(GuardObject *g, int write_pkru, int apply, int force, Released *r)
{
    int rc = guard_restore(g, write_pkru, apply, force);
    if (rc != 0 && !force) {
        return rc;
    }
    ThreadStack *s = g->stack;
    s->top = g->prev;
    s->depth--;
    same_key_pop(g);
    guard_retire(g, r);
    return rc;
}

static Py_ssize_t
stack_depth(ThreadStack *s, GuardObject *down_to)
{
    /* O(1), not a walk: isolated()'s exit would walk its thousands of guards once more */
    if (down_to != NULL && down_to->active && down_to->stack == s) {
        return s->depth - down_to->depth + 1;
    }
    return s->depth;
}

/* The thread that owned s has ended (or does not exist in this fork child): end its guards.
 * Runs with the GIL, possibly on another thread (a fork child, interpreter finalization). */
static void
stack_abandon(ThreadStack *s)
{
    /* On the owning thread (it is ending, or user code cleared its state dict while it
     * lives on), take the rights back too: a key whose guard ended can be evicted, and its
     * number must not stay open in a thread that goes on running. */
    int own = tls_stack == s;
    if (own) {
        tls_stack = NULL;
    }
    /* No thread pushes on s from here on (its owner has another stack, or none), and guards
     * of s cannot be exited from another thread, so the loop below is all that changes s. */
    int apply = !is_finalizing();
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    while (s->top != NULL) {
        Released released;
        released_init(&released);
        /* All at once if the list can hold them; else one at a time, each pop complete
         * before its reference is dropped. */
        Py_ssize_t n = released_reserve(&released, stack_depth(s, NULL)) == 0
                           ? released.cap : 1;
        while (s->top != NULL && released.n < n) {
            GuardObject *g = s->top;
            /* the thread is gone: its guards end whatever happens (APPLY_FORCE) */
            (void)guard_pop(g, own, apply, 1, &released); /* other threads' PKRU: not ours */
            g->ended = ENDED_THREAD;
        }
        if (apply) {
            released_drop(&released);
        }
        else if (released.items != released.small) {
            /* the interpreter is finalizing and a daemon thread may still be running native
             * code on these pages; keep the guards (and so their regions) alive until the
             * process ends rather than unmap memory under it */
            PyMem_Free(released.items);
        }
    }
    PyErr_Restore(et, ev, tb);
}

/* The checks of an entry (nothing changes): 0, or -1 with *f saying why. */
static int
guard_check(GuardObject *g, GuardObject *outer, int check_exports, GuardFailure *f)
{
    KeyObject *k = g->key;
    if (g->active) {
        f->why = FAIL_ACTIVE;
        return -1;
    }
    if (k->closed || k->closing) {
        f->why = FAIL_KEY_CLOSED;
        return -1;
    }
    if (g->binding != NULL && !g->binding->live) {
        f->why = FAIL_UNBOUND;
        return -1;
    }
    if (g->binding != NULL && mapping_secure_inherited(g->binding->mapping)) {
        f->why = FAIL_INHERITED;
        return -1;
    }
    for (GuardObject *o = check_exports ? outer : NULL; o != NULL; o = o->same_outer) {
        walk_steps++;
        if (o->exports > 0 && o->level > g->level) {
            f->why = FAIL_EXPORTS;
            f->other = o;
            f->exports = o->exports;
            return -1;
        }
    }
    return 0;
}

/* The non-allocating part of entering: check, apply, push.  Nothing here runs Python code;
 * on failure nothing changed and *f says why (raise it with raise_failure). */
static int
guard_activate(GuardObject *g, ThreadStack *s, int check_exports, GuardFailure *f)
{
    KeyObject *k = g->key;
    f->why = FAIL_NONE;
    GuardObject *root = g->active ? NULL : key_thread_root(k, s);
    GuardObject *outer = root != NULL ? root->innermost : NULL;
    if (guard_check(g, outer, check_exports, f) < 0 || guard_apply(g, s, outer, f) < 0) {
        return -1;
    }
    g->stack = s;
    g->thread = s->ident;
    g->active = 1;
    g->ended = ENDED_NO;
    g->stuck = 0;
    g->generation++;
    g->exports = 0;
    k->active++;
    if (g->binding != NULL) {
        g->binding->active++;
    }
    g->prev = s->top;
    Py_INCREF(g); /* the stack's reference */
    s->top = g;
    g->depth = ++s->depth;
    same_key_push(g, root);
    return 0;
}

/* Raise what guard_activate() reported, once the state is consistent.  May run Python code
 * (a repr, the error class): g and whatever *f names are held here meanwhile. */
static void
raise_failure(GuardObject *g, GuardFailure *f)
{
    Py_INCREF(g);
    switch (f->why) {
    case FAIL_ACTIVE:
        PyErr_Format(err(E_GUARD_STATE),
                     "%R is already active (entered on thread %lu); a guard is entered once at "
                     "a time: call set_access_rights() again for a second one",
                     (PyObject *)g, g->thread);
        break;
    case FAIL_KEY_CLOSED:
        PyErr_Format(err(E_GUARD_STATE), "cannot enter %R: its key is closed", (PyObject *)g);
        break;
    case FAIL_UNBOUND:
        PyErr_Format(err(E_GUARD_STATE),
                     "cannot enter %R: its association has ended (the region was disassociated "
                     "or closed); associate the region again and use the new association",
                     (PyObject *)g);
        break;
    case FAIL_EXPORTS:
        Py_INCREF(f->other);
        PyErr_Format(err(E_GUARD_STATE),
                     "cannot enter %R: %zd buffer export(s) (memoryviews) of a view under "
                     "%R are still alive, and they would fault under the narrower rights; "
                     "release them first ('with memoryview(view) as m:')",
                     (PyObject *)g, f->exports, (PyObject *)f->other);
        Py_DECREF(f->other);
        break;
    case FAIL_ERRNO:
        raise_errno(f->err, f->syscall);
        break;
    case FAIL_TAKE:
        raise_take_failed(g->key, f->err, f->syscall);
        break;
    case FAIL_INHERITED:
        PyErr_SetString(err(E_SECRET_UNAVAILABLE), secret_unavailable_msg);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "pkeyguard: a guard entry failed for no reason");
        break;
    }
    Py_DECREF(g);
}

static ViewObject *view_alloc(PyTypeObject *cls);
static void view_init(ViewObject *v, GuardObject *g, int writable);

static PyObject *
Guard_enter(GuardObject *g, PyObject *Py_UNUSED(ignored))
{
    /* Allocate first (the view may start the collector, whose finalizers may do anything,
     * even drop this thread's stack), then find the stack, then check and change. */
    ViewObject *v = NULL;
    if (g->enter_view != NULL) {
        v = view_alloc((PyTypeObject *)g->enter_view);
        if (v == NULL) {
            return NULL;
        }
    }
    ThreadStack *s = get_stack(); /* allocates only the first time, and nothing after it */
    if (s == NULL) {
        Py_XDECREF(v);
        return NULL;
    }
    GuardFailure f;
    if (guard_activate(g, s, 1, &f) < 0) {
        raise_failure(g, &f);
        Py_XDECREF(v);
        return NULL;
    }
    if (v != NULL) {
        view_init(v, g, 0);
        return (PyObject *)v;
    }
    Py_INCREF(g);
    return (PyObject *)g;
}

static PyObject *
raise_not_active(GuardObject *g)
{
    int ended = g->ended;
    g->ended = ENDED_NO;
    if (ended == ENDED_ORDER) {
        return PyErr_Format(err(E_GUARD_ORDER),
                            "%R was already exited: an outer guard left its 'with' block first "
                            "and restored the rights this guard had changed",
                            (PyObject *)g);
    }
    if (ended == ENDED_THREAD) {
        return PyErr_Format(err(E_GUARD_STATE),
                            "%R was ended when the thread that entered it (%lu) finished; its "
                            "rights and views went with that thread",
                            (PyObject *)g, g->thread);
    }
    return PyErr_Format(err(E_GUARD_STATE),
                        "%R is not active: __exit__ without a matching __enter__", (PyObject *)g);
}

/* Pop everything above g and g itself off g's stack (an out-of-order exit).  Guards other
 * than g are marked ENDED_ORDER, or ENDED_RETRIED if they were stuck; *foreign is set if one
 * was not stuck (a user's block left open: a real out-of-order exit).  r has room for all of
 * them.  Stops at a guard whose exit cannot re-protect its pages: that one and those below it
 * stay active. */
static int
stack_unwind_through(GuardObject *g, int *foreign, Released *r)
{
    ThreadStack *s = g->stack;
    while (s->top != NULL && s->top != g) {
        GuardObject *inner = s->top;
        int stuck = inner->stuck;
        int e = guard_pop(inner, 1, 1, 0, r);
        if (e != 0) {
            return e;
        }
        /* a stuck guard is in nobody's block any more: retried, not exited out of order */
        inner->ended = stuck ? ENDED_RETRIED : ENDED_ORDER;
        if (!stuck) {
            *foreign = 1;
        }
    }
    return g->active ? guard_pop(g, 1, 1, 0, r) : 0;
}

/* Stuck guards: a guard whose own exit failed stays active (fail closed: its pages keep
 * its rights), but often nobody holds it any more: the guard of a 'with secret.reveal() as
 * buf:' block, or one the library entered for a Secret.  So the library retries it: after
 * every exit that completes on its thread, the stuck guards it uncovers on top of the stack
 * are exited again (stuck_retry), and a Secret ends its own before it is closed
 * (Binding._end_stuck).  A caller that does hold one and leaves it again later gets False:
 * its exit was completed.  The ones above are counted first, so `released` has room. */
static Py_ssize_t
stuck_count(GuardObject *below)
{
    Py_ssize_t n = 0;
    for (GuardObject *o = below; o != NULL && o->stuck; o = o->prev) {
        n++;
    }
    return n;
}

/* Exit the stuck guards on top of s (at most `most`), each with its own retry; stops at the
 * first that still fails (it stays stuck).  Raises nothing. */
static void
stuck_retry(ThreadStack *s, Py_ssize_t most, int force, Released *r)
{
    while (most-- > 0 && s->top != NULL && s->top->stuck) {
        GuardObject *g = s->top;
        if (guard_pop(g, 1, 1, force, r) != 0 && !force) {
            return;
        }
        g->ended = ENDED_RETRIED;
    }
}

/* Mark the guards whose exit just failed: from the top of s (the one that failed: everything
 * above it was popped) down to `down_to`, whose exit was asked for (still active). */
static void
stuck_mark(ThreadStack *s, GuardObject *down_to)
{
    for (GuardObject *o = s->top; o != NULL; o = o->prev) {
        o->stuck = 1;
        if (o == down_to) {
            break;
        }
    }
}

/* Take the stuck guard g off its stack wherever it sits (its block is over: no user's
 * 'with' is left by this), keeping the same-key links, the counts and the rights of the
 * guards around it as if g had never been entered.  A guard above g on the same key takes
 * over what g saved (its own exit restores what was before g); otherwise g is this thread's
 * innermost on its key and its rights are undone as an exit would (guard_restore).  Returns
 * 0 or an errno as guard_pop; on a failure with force = 0 nothing changed. */
static int
guard_remove(GuardObject *g, int force, Released *r)
{
    ThreadStack *s = g->stack;
    if (s->top == g) {
        return guard_pop(g, 1, 1, force, r);
    }
    GuardObject *same_inner = NULL; /* the next-inner guard on g's key, this thread */
    for (GuardObject *o = g->root->innermost; o != g; o = o->same_outer) {
        same_inner = o;
    }
    if (same_inner == NULL) {
        int rc = guard_restore(g, 1, 1, force);
        if (rc != 0 && !force) {
            return rc;
        }
        same_key_pop(g); /* the innermost on its key */
    }
    else {
        if (mode_is_pool(g->key->mode)) {
            if (g->level != LEVEL_NONE) {
                g->key->slot.opening--;
            }
            if (same_inner->hw == g->hw) {
                same_inner->saved_bits = g->saved_bits;
            }
        }
        else {
            same_inner->saved_level = g->saved_level; /* counts: g was not innermost */
        }
        same_inner->same_outer = g->same_outer;
        if (g->root == g) {
            /* same_inner becomes the thread's root on the key, in g's place in k->roots */
            KeyObject *k = g->key;
            for (GuardObject *o = g->innermost; o != NULL; o = o->same_outer) {
                o->root = same_inner;
            }
            same_inner->innermost = g->innermost;
            same_inner->root_prev = g->root_prev;
            same_inner->root_next = g->root_next;
            if (g->root_prev != NULL) {
                g->root_prev->root_next = same_inner;
            }
            else {
                k->roots = same_inner;
            }
            if (g->root_next != NULL) {
                g->root_next->root_prev = same_inner;
            }
            g->root_prev = g->root_next = NULL;
            g->innermost = NULL;
        }
        g->root = NULL;
        g->same_outer = NULL;
    }
    GuardObject *above = s->top;
    while (above->prev != g) {
        above->depth--;
        above = above->prev;
    }
    above->depth--;
    above->prev = g->prev;
    s->depth--;
    guard_retire(g, r);
    return 0;
}

/* _end_stuck(force): exit again this thread's stuck guards on b's key, wherever they sit on
 * its stack (a Secret's: nobody else holds them, and their blocks are over).  force: end
 * them even if their pages still cannot be re-protected (the caller unmaps the region next:
 * a Secret's close(), which also wipes it); never one whose views have buffer exports (those
 * rely on the pages). */
static PyObject *
Binding_end_stuck(BindingObject *b, PyObject *arg)
{
    int force = PyObject_IsTrue(arg);
    if (force < 0) {
        return NULL;
    }
    ThreadStack *s = tls_stack;
    if (s == NULL || !b->live) {
        Py_RETURN_NONE;
    }
    /* this thread's guards on the key, innermost first, through the same-key links */
    GuardObject *root = key_thread_root(b->key, s);
    Py_ssize_t n = 0;
    for (GuardObject *o = root != NULL ? root->innermost : NULL; o != NULL; o = o->same_outer) {
        n += o->stuck;
    }
    if (n == 0) {
        Py_RETURN_NONE;
    }
    Released released;
    released_init(&released);
    if (released_reserve(&released, n) < 0) {
        return PyErr_NoMemory(); /* nothing changed */
    }
    GuardObject *g = root->innermost;
    while (g != NULL) {
        GuardObject *outer = g->same_outer; /* read before g is unlinked */
        if (g->stuck) {
            int hard = force && g->exports == 0;
            if (guard_remove(g, hard, &released) == 0 || hard) {
                g->ended = ENDED_RETRIED;
            } /* else: still stuck, still active; the others are independent of it */
        }
        g = outer;
    }
    released_drop(&released); /* the state is complete: finalizers may run now */
    Py_RETURN_NONE;
}

/* The end of a completed exit of g: False, or the error for exports that outlived it. */
static PyObject *
exit_exports_check(GuardObject *g, Py_ssize_t exports)
{
    if (exports > 0) {
        return PyErr_Format(err(E_VIEW),
                            "%zd buffer export(s) of a view (a memoryview or slice of it) "
                            "outlived %R; the rights were restored, so touching them now "
                            "faults. Release them before the block ends ('with memoryview(view) "
                            "as m:')",
                            exports, (PyObject *)g);
    }
    Py_RETURN_FALSE;
}

static PyObject *
Guard_exit(GuardObject *g, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (!g->active) {
        if (g->ended == ENDED_RETRIED) {
            g->ended = ENDED_NO;
            Py_RETURN_FALSE; /* its failed exit was completed since */
        }
        return raise_not_active(g);
    }
    ThreadStack *s = tls_stack;
    if (g->stack != s) {
        return PyErr_Format(err(E_GUARD_THREAD),
                            "%R was entered on thread %lu and cannot be exited on thread %lu: "
                            "PKRU is per thread, so a guard must be left by the thread that "
                            "entered it",
                            (PyObject *)g, g->thread, PyThread_get_thread_ident());
    }
    Released released;
    released_init(&released);
    if (s->top != g) {
        /* Out of order: unwind every guard above g and g itself, so this thread's rights
         * are exactly what they were before g was entered, then report it.  Unless all the
         * guards above g are stuck (their exits failed, their blocks are over): then this is
         * an exit in order that retries them first. */
        Py_ssize_t exports = g->exports;
        Py_ssize_t stuck = stuck_count(g->prev);
        if (released_reserve(&released, stack_depth(s, g) + stuck) < 0) {
            return PyErr_NoMemory(); /* nothing changed */
        }
        GuardObject *top = s->top;
        Py_INCREF(top);
        int foreign = 0;
        int e = stack_unwind_through(g, &foreign, &released);
        if (e != 0) {
            stuck_mark(s, g);
        }
        else {
            stuck_retry(s, stuck, 0, &released);
        }
        released_drop(&released); /* the state is complete: finalizers may run now */
        if (e != 0) {
            raise_restore_failed(e); /* the guard that failed and those below stay active */
        }
        else if (!foreign) {
            Py_DECREF(top);
            return exit_exports_check(g, exports);
        }
        else {
            PyErr_Format(err(E_GUARD_ORDER),
                         "guards exited out of order: %R was exited while %R, entered after "
                         "it, was still active. Both are now exited and this thread's rights "
                         "are as before %R. Common causes: a generator or coroutine suspended "
                         "inside a 'with' block, manual __enter__/__exit__ calls, an ExitStack "
                         "closed in the wrong order.",
                         (PyObject *)g, (PyObject *)top, (PyObject *)g);
        }
        Py_DECREF(top);
        return NULL;
    }
    Py_ssize_t exports = g->exports;
    Py_ssize_t stuck = stuck_count(g->prev);
    if (stuck > 0 && released_reserve(&released, 1 + stuck) < 0) {
        return PyErr_NoMemory(); /* nothing changed */
    }
    int e = guard_pop(g, 1, 1, 0, &released);
    if (e != 0) {
        g->stuck = 1;
    }
    else {
        stuck_retry(s, stuck, 0, &released);
    }
    released_drop(&released); /* the state is complete: finalizers may run now */
    if (e != 0) {
        return raise_restore_failed(e); /* g is still active: nothing changed */
    }
    return exit_exports_check(g, exports);
}

static void
Guard_dealloc(GuardObject *g)
{
    /* An active guard is held by its thread's stack: none reaches this point active.  A
     * registered guard class's instance arrives here untracked, from guard_class_dealloc or
     * subtype_dealloc; they drop the reference to the class after this returns. */
    Py_CLEAR(g->key);
    Py_CLEAR(g->binding);
    Py_CLEAR(g->enter_view);
    if (guard_recycle(g)) {
        return;
    }
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyObject *
Guard_get_thread(GuardObject *g, void *Py_UNUSED(closure))
{
    if (!g->active) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(g->thread);
}

static PyObject *
Guard_get_binding(GuardObject *g, void *Py_UNUSED(closure))
{
    if (g->binding == NULL || key_owned(g->key)) {
        Py_RETURN_NONE; /* a Secret's association (and so its key and region): not exposed */
    }
    Py_INCREF(g->binding);
    return (PyObject *)g->binding;
}

static PyObject *
Guard_get_key(GuardObject *g, void *Py_UNUSED(closure))
{
    if (key_owned(g->key)) {
        return raise_hidden("key");
    }
    Py_INCREF(g->key);
    return (PyObject *)g->key;
}

static PyObject *
Guard_repr(GuardObject *g)
{
    return PyUnicode_FromFormat("<%s key=%lld rights=%s %s>", Py_TYPE(g)->tp_name, g->key->id,
                                RIGHTS[g->level].name, g->active ? "active" : "inactive");
}

/* _view(writable): a view of the guard's region for this activation (ref_guard and
 * mut_ref_guard call it after their own clearer checks; these are the ones that hold). */
static PyObject *
Guard_view(GuardObject *g, PyObject *arg)
{
    int writable = PyObject_IsTrue(arg);
    if (writable < 0) {
        return NULL;
    }
    BindingObject *b = g->binding;
    if (b == NULL) {
        return PyErr_Format(err(E_ACCESS), "%R is key-wide: it gives no views", (PyObject *)g);
    }
    MappingObject *m = b->mapping;
    ViewObject *v = view_alloc((PyTypeObject *)PyTuple_GET_ITEM(m->view_types, writable));
    if (v == NULL) {
        return NULL;
    }
    const char *why = NULL;
    int cls = E_VIEW;
    if (!g->active) {
        why = "the guard is not active: take views inside its 'with' block";
    }
    else if (g->stack != tls_stack) {
        why = "the guard belongs to another thread";
    }
    else if (!b->live || m->base == 0) {
        cls = E_REGION;
        why = "the region is no longer associated with this guard's key";
    }
    else if (mapping_secure_inherited(m)) {
        cls = E_SECRET_UNAVAILABLE;
        why = secret_unavailable_msg;
    }
    else if (g->level == LEVEL_NONE) {
        cls = E_ACCESS;
        why = "a NoAccess guard grants no view";
    }
    else if (writable && g->level != LEVEL_WRITE) {
        cls = E_ACCESS;
        why = "a write view needs a ReadWrite guard";
    }
    else if (!(m->prot & PROT_READ) || (writable && !(m->prot & PROT_WRITE))) {
        cls = E_ACCESS;
        why = "the region's page rights do not allow it: it would fault whatever the key "
              "allows; change them with region.protect()";
    }
    if (why != NULL) {
        PyErr_SetString(err(cls), why);
        Py_DECREF(v);
        return NULL;
    }
    view_init(v, g, writable);
    return (PyObject *)v;
}

static PyMethodDef Guard_methods[] = {
    {"_new_view", (PyCFunction)Guard_view, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Guard_members[] = {
    {"level", T_INT, offsetof(GuardObject, level), READONLY, NULL},
    {"active", T_BOOL, offsetof(GuardObject, active), READONLY, NULL},
    {"exports", T_PYSSIZET, offsetof(GuardObject, exports), READONLY,
     "live buffer exports of this activation's views"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Guard_getset[] = {
    {"thread", (getter)Guard_get_thread, NULL, "ident of the thread that holds it, or None",
     NULL},
    {"_binding", (getter)Guard_get_binding, NULL, NULL, NULL},
    {"key", (getter)Guard_get_key, NULL,
     "the key this guard switches (not exposed for a Secret's guards)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Guard_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_dealloc = (destructor)Guard_dealloc,
    .tp_repr = (reprfunc)Guard_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Switches this thread's rights for one key while active (internal base).",
    .tp_methods = Guard_methods,
    .tp_members = Guard_members,
    .tp_getset = Guard_getset,
};

/* Key._guard(level): a key-wide guard (no views); the benchmark's floors use it. */
static PyObject *
Key_guard(KeyObject *k, PyObject *arg)
{
    long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!rights_level_valid(level)) {
        return PyErr_Format(PyExc_ValueError, "unknown rights level %ld", level);
    }
    return (PyObject *)guard_create(&Guard_Type, k, NULL, (int)level, NULL);
}

#include "_guardslots.h"

/* ------------------------------------------------------------------------------------ */
/* View                                                                                 */

struct ViewObject {
    PyObject_HEAD
    GuardObject *guard;   /* strong */
    uint64_t generation;
    char *addr;
    Py_ssize_t size;
    char fmt;             /* struct code of a scalar, or 's' for byte and composite views */
    char swap;            /* the scalar is stored in the non-native byte order */
    int writable;
    Py_ssize_t exports;
    PyObject *ctype;      /* composites: the value type, for .contents */
};

static ViewObject *
view_alloc(PyTypeObject *cls)
{
    return (ViewObject *)cls->tp_alloc(cls, 0);
}

static void
view_init(ViewObject *v, GuardObject *g, int writable)
{
    MappingObject *m = g->binding->mapping;
    Py_INCREF(g);
    v->guard = g;
    v->generation = g->generation;
    v->addr = (char *)m->addr;
    v->size = (Py_ssize_t)m->size;
    v->fmt = m->fmt;
    v->swap = m->swap;
    v->writable = writable;
    Py_XINCREF(m->ctype);
    v->ctype = m->ctype;
}

/* May this thread write through v now?  A guard for the same key entered after v's guard
 * rules the thread's rights (a ReadOnly block nested in a ReadWrite one). */
static inline int
view_rights_now(ViewObject *v)
{
    return v->guard->root->innermost->level; /* O(1): the thread's innermost on the key */
}

/* A failed system call may have left the view's region m at other rights than its key's
 * level (MAP_F_LAGGING): apply the level to that region alone again before an access that
 * relies on it (O(1): the key's other regions wait for its next switch), or refuse the
 * access (a region left narrower would fault).  The key's level is what its books say the
 * pages have (never wider), so this is not a widening of the key: nothing is put back. */
static int
view_settle(KeyObject *k, MappingObject *m)
{
    int lagging = 0;
    int e = region_protect(m, k->effective_level, 0, &lagging);
    if (e != 0) {
        raise_errno(e, "mprotect");
        return -1;
    }
    return 0;
}

/* The check every access makes, after converting its arguments and before touching memory.
 * Nothing after it may run Python code until the access is done. */
static int
view_check(ViewObject *v, int write)
{
    GuardObject *g = v->guard;
    if (!g->active || g->generation != v->generation) {
        MappingObject *m = g->binding != NULL ? g->binding->mapping : NULL;
        if (g->active && m != NULL && (m->flags & (MAP_F_WIPEONFORK | MAP_F_SECRETMEM)) &&
            mapping_inherited(m)) {
            PyErr_SetString(err(E_SECRET_UNAVAILABLE),
                            "this view was made before the process forked: a fork child never "
                            "gets a parent's secret bytes (it has zero pages there); read the "
                            "secret again in the child");
            return -1;
        }
        PyErr_SetString(err(E_VIEW),
                        "view used after its guard exited: views are valid only inside the "
                        "'with' block that created them");
        return -1;
    }
    if (g->stack != tls_stack) {
        PyErr_Format(err(E_VIEW),
                     "view used from another thread: its guard belongs to thread %lu, and "
                     "rights are per thread",
                     g->thread);
        return -1;
    }
    if (write && !v->writable) {
        PyErr_SetString(err(E_ACCESS),
                        "this view is read-only: use mut_ref_guard() under a ReadWrite guard");
        return -1;
    }
    MappingObject *vm = g->binding->mapping;
    if ((vm->flags & MAP_F_LAGGING) && view_settle(g->key, vm) < 0) {
        return -1;
    }
    if (g->root->innermost != g) {
        int level = view_rights_now(v);
        if (level < (write ? LEVEL_WRITE : LEVEL_READ)) {
            PyErr_Format(err(E_ACCESS),
                         "%s through this view is not allowed now: a %s guard on the same key, "
                         "entered after the view's guard, restricts this thread's rights",
                         write ? "writing" : "reading", RIGHTS[level].name);
            return -1;
        }
    }
    return 0;
}

static Py_ssize_t
fmt_size(char fmt)
{
    switch (fmt) {
    case 'b': case 'B': case '?': case 'c': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': case 'f': return 4;
    case 'l': case 'L': case 'q': case 'Q': case 'd': return 8;
    default: return -1;
    }
}

/* A scalar's bits, converted before the check.  8 bytes hold every supported type. */
typedef union {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f;
    double d;
    unsigned char b[8];
} Bits;

static void
bits_swap(Bits *x, Py_ssize_t n)
{
    switch (n) {
    case 2: x->u16 = __builtin_bswap16(x->u16); break;
    case 4: x->u32 = __builtin_bswap32(x->u32); break;
    case 8: x->u64 = __builtin_bswap64(x->u64); break;
    default: break;
    }
}

/* An integer value -> n-byte integer bits.  Objects other than int (numpy integers, say)
 * are converted with __index__, which is user code: this runs before the check. */
static int
convert_int_exact(PyObject *obj, int bytes, int is_signed, Bits *out);

static int
convert_int(PyObject *obj, int bytes, int is_signed, Bits *out)
{
    if (PyLong_Check(obj)) {
        return convert_int_exact(obj, bytes, is_signed, out);
    }
    if (!PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an integer is required, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *n = PyNumber_Index(obj);
    if (n == NULL) {
        return -1;
    }
    int rc = convert_int_exact(n, bytes, is_signed, out);
    Py_DECREF(n);
    return rc;
}

/* int (or a subclass) -> bits; PyLong_As* read the number directly and run no user code. */
static int
convert_int_exact(PyObject *obj, int bytes, int is_signed, Bits *out)
{
    if (is_signed) {
        long long x = PyLong_AsLongLong(obj);
        if (x == -1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                goto overflow;
            }
            return -1;
        }
        long long lo = bytes == 8 ? INT64_MIN : -(1LL << (bytes * 8 - 1));
        long long hi = bytes == 8 ? INT64_MAX : (1LL << (bytes * 8 - 1)) - 1;
        if (x < lo || x > hi) {
            goto overflow;
        }
        out->u64 = 0;
        switch (bytes) {
        case 1: out->u8 = (uint8_t)(int8_t)x; break;
        case 2: out->u16 = (uint16_t)(int16_t)x; break;
        case 4: out->u32 = (uint32_t)(int32_t)x; break;
        default: out->u64 = (uint64_t)x; break;
        }
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(obj);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            goto overflow;
        }
        return -1;
    }
    if (bytes < 8 && x >> (bytes * 8)) {
        goto overflow;
    }
    out->u64 = 0;
    switch (bytes) {
    case 1: out->u8 = (uint8_t)x; break;
    case 2: out->u16 = (uint16_t)x; break;
    case 4: out->u32 = (uint32_t)x; break;
    default: out->u64 = (uint64_t)x; break;
    }
    return 0;
overflow:
    PyErr_Format(PyExc_OverflowError, "%R does not fit a %s %d-byte integer", obj,
                 is_signed ? "signed" : "unsigned", bytes);
    return -1;
}

/* Convert a value for a scalar of format fmt.  This is where user code may run (__bool__,
 * __float__); it runs before the check. */
static int
convert_scalar(char fmt, PyObject *value, Bits *out)
{
    switch (fmt) {
    case 'b': return convert_int(value, 1, 1, out);
    case 'B': return convert_int(value, 1, 0, out);
    case 'h': return convert_int(value, 2, 1, out);
    case 'H': return convert_int(value, 2, 0, out);
    case 'i': return convert_int(value, 4, 1, out);
    case 'I': return convert_int(value, 4, 0, out);
    case 'l': case 'q': return convert_int(value, 8, 1, out);
    case 'L': case 'Q': return convert_int(value, 8, 0, out);
    case '?': {
        int t = PyObject_IsTrue(value);
        if (t < 0) {
            return -1;
        }
        out->u64 = 0;
        out->u8 = (uint8_t)t;
        return 0;
    }
    case 'c':
        if (!PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 1) {
            PyErr_SetString(PyExc_TypeError, "a single byte (bytes of length 1) is required");
            return -1;
        }
        out->u64 = 0;
        out->u8 = (uint8_t)PyBytes_AS_STRING(value)[0];
        return 0;
    case 'f': case 'd': {
        double d = PyFloat_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        out->u64 = 0;
        if (fmt == 'f') {
            out->f = (float)d;
        }
        else {
            out->d = d;
        }
        return 0;
    }
    }
    PyErr_SetString(PyExc_TypeError, "unsupported view format");
    return -1;
}

static PyObject *
bits_to_object(char fmt, const Bits *x)
{
    switch (fmt) {
    case 'b': return PyLong_FromLong((int8_t)x->u8);
    case 'B': return PyLong_FromLong(x->u8);
    case '?': return PyBool_FromLong(x->u8 != 0);
    case 'c': return PyBytes_FromStringAndSize((const char *)x->b, 1);
    case 'h': return PyLong_FromLong((int16_t)x->u16);
    case 'H': return PyLong_FromLong(x->u16);
    case 'i': return PyLong_FromLong((int32_t)x->u32);
    case 'I': return PyLong_FromUnsignedLong(x->u32);
    case 'l': case 'q': return PyLong_FromLongLong((int64_t)x->u64);
    case 'L': case 'Q': return PyLong_FromUnsignedLongLong(x->u64);
    case 'f': return PyFloat_FromDouble(x->f);
    case 'd': return PyFloat_FromDouble(x->d);
    }
    PyErr_SetString(PyExc_TypeError, "unsupported view format");
    return NULL;
}

static void
load_bits(const ViewObject *v, Bits *x)
{
    Py_ssize_t n = fmt_size(v->fmt);
    x->u64 = 0;
    switch (n) {
    case 1: x->u8 = *(volatile uint8_t *)v->addr; break;
    case 2: x->u16 = *(volatile uint16_t *)v->addr; break;
    case 4: x->u32 = *(volatile uint32_t *)v->addr; break;
    default: x->u64 = *(volatile uint64_t *)v->addr; break;
    }
    if (v->swap) {
        bits_swap(x, n);
    }
}

static void
store_bits(ViewObject *v, Bits x)
{
    Py_ssize_t n = fmt_size(v->fmt);
    if (v->swap) {
        bits_swap(&x, n);
    }
    switch (n) {
    case 1: *(volatile uint8_t *)v->addr = x.u8; break;
    case 2: *(volatile uint16_t *)v->addr = x.u16; break;
    case 4: *(volatile uint32_t *)v->addr = x.u32; break;
    default: *(volatile uint64_t *)v->addr = x.u64; break;
    }
}

/* A new bytes object of n bytes copied from p after a successful check (allocated first). */
static PyObject *
checked_copy_out(ViewObject *v, const char *p, Py_ssize_t n)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        return NULL;
    }
    if (view_check(v, 0) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(out), p, (size_t)n);
    return out;
}

static PyObject *
View_get_value(ViewObject *v, void *Py_UNUSED(closure))
{
    if (v->fmt == 's') {
        return checked_copy_out(v, v->addr, v->size);
    }
    if (view_check(v, 0) < 0) {
        return NULL;
    }
    Bits x;
    load_bits(v, &x);
    return bits_to_object(v->fmt, &x);
}

static int
View_set_value(ViewObject *v, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a view's value");
        return -1;
    }
    if (v->fmt != 's') {
        Bits x;
        if (convert_scalar(v->fmt, value, &x) < 0 || view_check(v, 1) < 0) {
            return -1;
        }
        store_bits(v, x);
        return 0;
    }
    /* Byte views: whole-content assignment from a bytes-like object of the same size. */
    Py_buffer src;
    if (PyObject_GetBuffer(value, &src, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    int rc = -1;
    if (src.len != v->size) {
        PyErr_Format(PyExc_ValueError, "need exactly %zd bytes, got %zd", v->size, src.len);
    }
    else if (view_check(v, 1) == 0) {
        memmove(v->addr, src.buf, (size_t)src.len);
        rc = 0;
    }
    PyBuffer_Release(&src);
    return rc;
}

static Py_ssize_t
View_length(ViewObject *v)
{
    return v->size;
}

/* Resolve an index or a step-1 slice (this runs __index__ of the index or the bounds). */
static int
view_slice(ViewObject *v, PyObject *item, Py_ssize_t *start, Py_ssize_t *len)
{
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (i < 0) {
            i += v->size;
        }
        if (i < 0 || i >= v->size) {
            PyErr_SetString(PyExc_IndexError, "view index out of range");
            return -1;
        }
        *start = i;
        *len = -1; /* single item */
        return 0;
    }
    if (PySlice_Check(item)) {
        Py_ssize_t stop, step;
        if (PySlice_Unpack(item, start, &stop, &step) < 0) {
            return -1;
        }
        if (step != 1) {
            PyErr_SetString(PyExc_ValueError, "views take contiguous slices only (step 1)");
            return -1;
        }
        *len = PySlice_AdjustIndices(v->size, start, &stop, step);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "view indices must be integers or slices, not %.200s",
                 Py_TYPE(item)->tp_name);
    return -1;
}

static PyObject *
View_subscript(ViewObject *v, PyObject *item)
{
    Py_ssize_t start, len;
    if (view_slice(v, item, &start, &len) < 0) {
        return NULL;
    }
    if (len >= 0) {
        return checked_copy_out(v, v->addr + start, len);
    }
    if (view_check(v, 0) < 0) {
        return NULL;
    }
    uint8_t byte = ((volatile uint8_t *)v->addr)[start];
    return PyLong_FromLong(byte);
}

static int
View_ass_subscript(ViewObject *v, PyObject *item, PyObject *value)
{
    Py_ssize_t start, len;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete view items");
        return -1;
    }
    if (view_slice(v, item, &start, &len) < 0) {
        return -1;
    }
    if (len < 0) {
        Bits x;
        if (convert_int(value, 1, 0, &x) < 0 || view_check(v, 1) < 0) {
            return -1;
        }
        ((volatile uint8_t *)v->addr)[start] = x.u8;
        return 0;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(value, &src, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    int rc = -1;
    if (src.len != len) {
        PyErr_Format(PyExc_ValueError, "slice assignment must keep the size: %zd != %zd",
                     src.len, len);
    }
    else if (view_check(v, 1) == 0) {
        memmove(v->addr + start, src.buf, (size_t)len);
        rc = 0;
    }
    PyBuffer_Release(&src);
    return rc;
}

static int
View_getbuffer(ViewObject *v, Py_buffer *view, int flags)
{
    int want_write = (flags & PyBUF_WRITABLE) != 0;
    view->obj = NULL;
    if (want_write && !v->writable) {
        PyErr_SetString(PyExc_BufferError,
                        "read-only view: a writable buffer needs mut_ref_guard()");
        return -1;
    }
    if (view_check(v, want_write) < 0) {
        return -1;
    }
    /* A write view under a narrower guard nested inside exports read-only: a writable
     * memoryview would fault on its first write. */
    GuardObject *g = v->guard;
    int can_write =
        v->writable && (g->root->innermost == g || view_rights_now(v) == LEVEL_WRITE);
    if (PyBuffer_FillInfo(view, (PyObject *)v, v->addr, v->size, !can_write, flags) < 0) {
        return -1;
    }
    v->exports++;
    g->exports++;
    g->binding->mapping->exports++;
    return 0;
}

static void
View_releasebuffer(ViewObject *v, Py_buffer *Py_UNUSED(view))
{
    v->exports--;
    /* Exports are counted per activation: a release left over from an earlier one does not
     * touch the count of the current one. */
    if (v->guard->generation == v->generation && v->guard->exports > 0) {
        v->guard->exports--;
    }
    MappingObject *m = v->guard->binding->mapping; /* views hold their guard, it the binding */
    if (--m->exports == 0 && m->held != NULL) {
        held_sweep(); /* the last export of a released mapping: its range can go */
    }
}

static PyObject *
View_tobytes(ViewObject *v, PyObject *Py_UNUSED(ignored))
{
    return checked_copy_out(v, v->addr, v->size);
}

static PyObject *
View_check(ViewObject *v, PyObject *write)
{
    int w = PyObject_IsTrue(write);
    if (w < 0 || view_check(v, w) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _read(offset, length) -> bytes: a checked copy of part of the value (composite views). */
static PyObject *
View_read(ViewObject *v, PyObject *args)
{
    Py_ssize_t offset, length;
    if (!PyArg_ParseTuple(args, "nn:_read", &offset, &length)) {
        return NULL;
    }
    if (offset < 0 || length < 0 || offset > v->size || length > v->size - offset) {
        PyErr_Format(PyExc_IndexError, "bytes [%zd, %zd) are outside the %zd-byte value",
                     offset, offset + length, v->size);
        return NULL;
    }
    return checked_copy_out(v, v->addr + offset, length);
}

/* _write(offset, data): a checked copy into part of the value (composite views). */
static PyObject *
View_write(ViewObject *v, PyObject *args)
{
    Py_ssize_t offset;
    PyObject *data;
    if (!PyArg_ParseTuple(args, "nO:_write", &offset, &data)) {
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(data, &src, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (offset < 0 || offset > v->size || src.len > v->size - offset) {
        PyErr_Format(PyExc_IndexError, "bytes [%zd, %zd) are outside the %zd-byte value",
                     offset, offset + src.len, v->size);
    }
    else if (view_check(v, 1) == 0) {
        memmove(v->addr + offset, src.buf, (size_t)src.len);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&src);
    return result;
}

static PyObject *
View_get_valid(ViewObject *v, void *Py_UNUSED(closure))
{
    GuardObject *g = v->guard;
    return PyBool_FromLong(g->active && g->generation == v->generation &&
                           g->stack == tls_stack);
}

static PyObject *
View_get_ctype(ViewObject *v, void *Py_UNUSED(closure))
{
    PyObject *t = v->ctype ? v->ctype : Py_None;
    Py_INCREF(t);
    return t;
}

static PyObject *
View_repr(ViewObject *v)
{
    return PyUnicode_FromFormat("<%s %zd bytes format=%c %s%s>", Py_TYPE(v)->tp_name, v->size,
                                v->fmt, v->writable ? "read-write" : "read-only",
                                (v->guard->active && v->guard->generation == v->generation)
                                    ? "" : " (expired)");
}

static void
View_dealloc(ViewObject *v)
{
    Py_CLEAR(v->guard);
    Py_CLEAR(v->ctype);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

/* v.value through the type's getattro/setattro slots rather than the generic path: CPython
 * (3.11 to 3.13) does not specialise attribute access to a C getset, so the generic path
 * looks the name up in the type's MRO and calls the descriptor on every access.  The name
 * in 'v.value' is the interned "value", so one pointer comparison finds the scalar fast path;
 * every other name (and every non-scalar view) takes the generic path, which reaches the
 * same getset. */
static PyObject *str_value; /* interned "value" */

static PyObject *
View_getattro(ViewObject *v, PyObject *name)
{
    if (name == str_value && v->fmt != 's') {
        if (view_check(v, 0) < 0) {
            return NULL;
        }
        Bits x;
        load_bits(v, &x);
        return bits_to_object(v->fmt, &x);
    }
    return PyObject_GenericGetAttr((PyObject *)v, name);
}

static int
View_setattro(ViewObject *v, PyObject *name, PyObject *value)
{
    if (name == str_value && value != NULL && v->fmt != 's') {
        Bits x;
        if (convert_scalar(v->fmt, value, &x) < 0 || view_check(v, 1) < 0) {
            return -1;
        }
        store_bits(v, x);
        return 0;
    }
    return PyObject_GenericSetAttr((PyObject *)v, name, value);
}

static PyMethodDef View_methods[] = {
    {"tobytes", (PyCFunction)View_tobytes, METH_NOARGS, "Copy the bytes out."},
    {"check", (PyCFunction)View_check, METH_O, "Raise unless usable (write=True: writable)."},
    {"_read", (PyCFunction)View_read, METH_VARARGS, NULL},
    {"_write", (PyCFunction)View_write, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef View_getset[] = {
    {"value", (getter)View_get_value, (setter)View_set_value, "the value", NULL},
    {"valid", (getter)View_get_valid, NULL, "usable now, on this thread", NULL},
    {"_ctype", (getter)View_get_ctype, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef View_members[] = {
    {"writable", T_BOOL, offsetof(ViewObject, writable), READONLY, NULL},
    {"guard", T_OBJECT, offsetof(ViewObject, guard), READONLY, NULL},
    {"exports", T_PYSSIZET, offsetof(ViewObject, exports), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMappingMethods View_as_mapping = {
    .mp_length = (lenfunc)View_length,
    .mp_subscript = (binaryfunc)View_subscript,
    .mp_ass_subscript = (objobjargproc)View_ass_subscript,
};

static PySequenceMethods View_as_sequence = {
    .sq_length = (lenfunc)View_length,
};

static PyBufferProcs View_as_buffer = {
    .bf_getbuffer = (getbufferproc)View_getbuffer,
    .bf_releasebuffer = (releasebufferproc)View_releasebuffer,
};

static PyTypeObject View_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.View",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)View_dealloc,
    .tp_repr = (reprfunc)View_repr,
    .tp_as_sequence = &View_as_sequence,
    .tp_as_mapping = &View_as_mapping,
    .tp_as_buffer = &View_as_buffer,
    .tp_getattro = (getattrofunc)View_getattro,
    .tp_setattro = (setattrofunc)View_setattro,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Access to a region, valid only while its guard is active on this thread.",
    .tp_methods = View_methods,
    .tp_members = View_members,
    .tp_getset = View_getset,
};

/* ------------------------------------------------------------------------------------ */
/* Isolation: NoAccess on every open key but an allow-list, as one unit                */

typedef struct {
    PyObject_HEAD
    PyObject *allow;   /* tuple of keys left alone */
    PyObject *guards;  /* tuple of the guards entered, while active; NULL otherwise */
    int foreign;       /* an exit (that failed) already left guards entered inside the block */
} GroupObject;

static uint64_t group_stamp = 0; /* KeyObject.mark: protected by the GIL */

/* How many of the guards in `all` have an open key (those are entered), and how many of
 * those keys are the user's (those are handed out: a Secret's key is closed without being
 * handed out).  Each open key's mark is set to stamp (in the same pass over the keys). */
static Py_ssize_t
group_count_open(PyObject *all, Py_ssize_t made, Py_ssize_t *users, uint64_t stamp)
{
    Py_ssize_t n = 0;
    *users = 0;
    for (Py_ssize_t i = 0; i < made; i++) {
        KeyObject *k = ((GuardObject *)PyTuple_GET_ITEM(all, i))->key;
        int open = !k->closed && !k->closing;
        n += open;
        *users += open && !key_owned(k);
        if (open) {
            k->mark = stamp;
        }
    }
    return n;
}

static PyObject *
Group_enter(GroupObject *grp, PyObject *Py_UNUSED(ignored))
{
    if (grp->guards != NULL) {
        PyErr_SetString(err(E_GUARD_STATE),
                        "this isolated() block is already active; call isolated() again for "
                        "a second one");
        return NULL;
    }
    /* Allocate everything first (any allocation can start the collector, whose finalizers
     * may open or close keys, enter or leave guards, or drop this thread's stack), then
     * check, then enter every guard with nothing in between that could run Python code;
     * a failure undoes the entries made, and is raised only after that. */
    Py_ssize_t n = live_key_count;
    PyObject *keys_now = PyTuple_New(n);
    if (keys_now == NULL) {
        return NULL;
    }
    char *isolate = PyMem_Malloc((size_t)(n ? n : 1)); /* runs no Python code */
    if (isolate == NULL) {
        Py_DECREF(keys_now);
        return PyErr_NoMemory();
    }
    /* The snapshot, and which keys to isolate, in one pass with no allocation in it:
     * O(keys + allowed), the allowed keys stamped first (the pass over the keys is what
     * costs: with 10,000 keys they do not fit the caches). */
    uint64_t stamp = ++group_stamp;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(grp->allow); i++) {
        ((KeyObject *)PyTuple_GET_ITEM(grp->allow, i))->mark = stamp;
    }
    Py_ssize_t seen = 0, want = 0;
    for (KeyObject *k = live_keys.live_next; k != &live_keys && seen < n; k = k->live_next) {
        Py_INCREF(k);
        isolate[seen] = (char)(k->mark != stamp);
        want += k->mark != stamp;
        PyTuple_SET_ITEM(keys_now, seen++, (PyObject *)k);
    }
    PyObject *all = PyTuple_New(want);
    if (all == NULL) {
        PyMem_Free(isolate);
        Py_DECREF(keys_now);
        return NULL;
    }
    Py_ssize_t made = 0, open_n = 0, users_n = 0; /* the counts of group_count_open() */
    for (Py_ssize_t j = 0; j < seen; j++) {
        if (!isolate[j]) {
            continue;
        }
        KeyObject *k = (KeyObject *)PyTuple_GET_ITEM(keys_now, j);
        /* A key-wide NoAccess guard per key: same LIFO and per-thread rules as any guard. */
        GuardObject *g = guard_create(&Guard_Type, k, NULL, LEVEL_NONE, NULL);
        if (g == NULL) {
            PyMem_Free(isolate);
            Py_DECREF(keys_now);
            Py_DECREF(all);
            return NULL;
        }
        PyTuple_SET_ITEM(all, made++, (PyObject *)g);
        /* counted as it goes (one pass less over the keys); checked again below */
        int open = !k->closed && !k->closing;
        open_n += open;
        users_n += open && !key_owned(k);
    }
    PyMem_Free(isolate);
    Py_DECREF(keys_now); /* each guard holds its key */
    /* The record of the entered guards and the keys handed out, sized for the keys still
     * open once the last allocation is done (a finalizer run by one may close keys, so the
     * counts are taken again after it, and the allocations made again if they changed). */
    ThreadStack *s = NULL;
    PyObject *guards = NULL, *keys = NULL;
    Released released;
    released_init(&released);
    for (;;) {
        Py_ssize_t count = open_n, users = users_n;
        s = get_stack();
        if (s == NULL) {
            goto fail;
        }
        guards = PyTuple_New(count);
        keys = guards != NULL ? PyTuple_New(users) : NULL;
        if (keys == NULL || released_reserve(&released, count) < 0) {
            if (keys != NULL) {
                PyErr_NoMemory();
            }
            goto fail;
        }
        /* the keys to isolate are stamped for the buffer-exports check below */
        stamp = ++group_stamp;
        open_n = group_count_open(all, made, &users_n, stamp);
        if (open_n == count && users_n == users && tls_stack == s) {
            break; /* nothing ran since the count: it holds until the entries are made */
        }
        Py_CLEAR(guards);
        Py_CLEAR(keys);
    }
    /* From here to the entries: no allocation, no Python code. */
    /* The buffer-exports check of each entry, once for the whole group (per guard it would
     * cost a lookup per key): the keys to isolate were stamped by the count above, and this
     * thread's stack is walked once.  O(keys + this thread's guards). */
    for (GuardObject *o = s->top; o != NULL; o = o->prev) {
        if (o->exports <= 0 || o->level == LEVEL_NONE) {
            continue;
        }
        if (o->key->mark == stamp) {
            PyErr_Format(err(E_GUARD_STATE),
                         "cannot enter isolated(): %zd buffer export(s) (memoryviews) of a "
                         "view under %R are still alive, and they would fault under NoAccess; "
                         "release them first ('with memoryview(view) as m:') or allow the key",
                         o->exports, (PyObject *)o);
            goto fail;
        }
    }
    Py_ssize_t count = 0, handed = 0;
    for (Py_ssize_t i = 0; i < made; i++) {
        GuardObject *g = (GuardObject *)PyTuple_GET_ITEM(all, i);
        if (g->key->closed || g->key->closing) {
            continue;
        }
        GuardFailure f;
        if (guard_activate(g, s, 0, &f) < 0) {
            /* Leave the ones entered (on top of the stack, in reverse order: nothing ran
             * since), then raise, then let go of what they held. */
            while (count > 0) {
                count--;
                (void)guard_pop(s->top, 1, 1, 1, &released); /* never left half entered */
            }
            raise_failure(g, &f);
            released_drop(&released);
            goto fail;
        }
        PyTuple_SET_ITEM(guards, count, (PyObject *)g);
        Py_INCREF(g); /* the record's reference */
        if (!key_owned(g->key)) {
            Py_INCREF(g->key);
            PyTuple_SET_ITEM(keys, handed++, (PyObject *)g->key);
        }
        count++;
    }
    released_drop(&released);
    Py_DECREF(all);
    grp->guards = guards;
    return keys;
fail:
    released_drop(&released);
    Py_XDECREF(guards);
    Py_XDECREF(keys);
    Py_DECREF(all);
    return NULL;
}

static PyObject *
Group_exit(GroupObject *grp, PyObject *Py_UNUSED(args))
{
    PyObject *guards = grp->guards;
    if (guards == NULL) {
        PyErr_SetString(err(E_GUARD_STATE),
                        "this isolated() block is not active: __exit__ without __enter__");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(guards);
    if (n == 0) {
        Py_CLEAR(grp->guards);
        Py_RETURN_FALSE;
    }
    GuardObject *first = (GuardObject *)PyTuple_GET_ITEM(guards, 0);
    if (!first->active && first->ended == ENDED_RETRIED) {
        first->ended = ENDED_NO; /* its failed exit was completed since */
        grp->guards = NULL;
        grp->foreign = 0;
        Py_DECREF(guards);
        Py_RETURN_FALSE;
    }
    if (!first->active) {
        grp->guards = NULL;
        PyObject *r = raise_not_active(first);
        Py_DECREF(guards);
        return r;
    }
    if (first->stack != tls_stack) {
        /* Nothing changes: the block can still be left from the thread that entered it. */
        return PyErr_Format(err(E_GUARD_THREAD),
                            "an isolated() block entered on thread %lu cannot be exited on "
                            "thread %lu: rights are per thread",
                            first->thread, PyThread_get_thread_ident());
    }
    /* Pop down to the first guard; anything that is not ours means an out-of-order exit. */
    ThreadStack *s = first->stack;
    Released released;
    released_init(&released);
    Py_ssize_t stuck = stuck_count(first->prev);
    if (released_reserve(&released, stack_depth(s, first) + stuck) < 0) {
        return PyErr_NoMemory(); /* nothing changed */
    }
    int e = 0;
    Py_ssize_t next = n - 1; /* ours come off the stack in reverse order of entry */
    while (s->top != NULL && s->top != first && e == 0) {
        GuardObject *top = s->top;
        int ours = top->stuck; /* a stuck guard's block is over: not left open inside ours */
        for (Py_ssize_t i = next; i >= 1; i--) {
            if (PyTuple_GET_ITEM(guards, i) == (PyObject *)top) {
                ours = 1;
                next = i - 1;
                break;
            }
        }
        int was_stuck = top->stuck;
        e = guard_pop(top, 1, 1, 0, &released);
        if (e == 0 && was_stuck) {
            top->ended = ENDED_RETRIED;
        }
        else if (e == 0 && !ours) {
            grp->foreign = 1;
            top->ended = ENDED_ORDER;
        }
    }
    if (e == 0 && first->active) {
        e = guard_pop(first, 1, 1, 0, &released);
    }
    if (e != 0) {
        /* A guard that could not re-protect its pages stays active, and so does the block
         * (with the guards under it): leaving it again retries. */
        stuck_mark(s, first);
        released_drop(&released);
        return raise_restore_failed(e);
    }
    stuck_retry(s, stuck, 0, &released);
    int foreign = grp->foreign;
    grp->foreign = 0;
    grp->guards = NULL;
    released_drop(&released); /* the state is complete: finalizers may run now */
    Py_DECREF(guards);
    if (foreign) {
        PyErr_SetString(err(E_GUARD_ORDER),
                        "an isolated() block was exited while guards entered inside it were "
                        "still active; they are exited too, and this thread's rights are as "
                        "before the block");
        return NULL;
    }
    Py_RETURN_FALSE;
}

static void
Group_dealloc(GroupObject *grp)
{
    Py_CLEAR(grp->allow);
    Py_CLEAR(grp->guards);
    Py_TYPE(grp)->tp_free((PyObject *)grp);
}

static PyMethodDef Group_methods[] = {
    {"__enter__", (PyCFunction)Group_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Group_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Group_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.isolation",
    .tp_basicsize = sizeof(GroupObject),
    .tp_dealloc = (destructor)Group_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NoAccess guards on every open key but an allow-list, entered and left as one.",
    .tp_methods = Group_methods,
};

static PyObject *
core_isolation(PyObject *Py_UNUSED(m), PyObject *allow)
{
    if (!PyTuple_Check(allow)) {
        PyErr_SetString(PyExc_TypeError, "isolation() takes a tuple of keys");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(allow); i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(allow, i), &Key_Type)) {
            PyErr_SetString(PyExc_TypeError, "isolation() takes a tuple of keys");
            return NULL;
        }
    }
    GroupObject *grp = PyObject_New(GroupObject, &Group_Type);
    if (grp == NULL) {
        return NULL;
    }
    Py_INCREF(allow);
    grp->allow = allow;
    grp->guards = NULL;
    grp->foreign = 0;
    return (PyObject *)grp;
}

/* ------------------------------------------------------------------------------------ */
/* RightsType: the metaclass of PkeyPermissions                                         */
/*
 * 'PkeyPermissions.ReadWrite' is a class attribute lookup on an Enum class.  CPython 3.11's
 * EnumType defines __getattr__, so every such lookup goes through slot_tp_getattr_hook and a
 * Python-level call of type.__getattribute__ (~70 ns); 3.12 and 3.13 dropped the hook but do
 * not specialise attribute loads on classes with a custom metaclass (~20 ns).  RightsType is
 * EnumType with one C slot added: a member is an entry of its class's own dict whose type is
 * the class, and a name that finds one returns it after one dict lookup.  Every other name
 * takes EnumType's own path, so nothing else about the enum changes.
 */

static PyObject *enum_type_getattr; /* EnumType.__getattr__ (3.11), or NULL (3.12+) */

static PyObject *
RightsType_getattro(PyObject *cls, PyObject *name)
{
    if (PyUnicode_CheckExact(name)) {
        /* A type's dict has str keys only, and str hashing and comparison run no user code. */
        PyObject *member = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict, name);
        if (member != NULL && Py_IS_TYPE(member, (PyTypeObject *)cls)) {
            Py_INCREF(member);
            return member;
        }
        if (member == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    /* EnumType's own path, as slot_tp_getattr_hook takes it (calling that hook itself would
     * find this slot again through RightsType.__getattribute__): type.__getattribute__, then
     * EnumType.__getattr__ for a name it did not find. */
    PyObject *res = PyType_Type.tp_getattro(cls, name);
    if (res == NULL && enum_type_getattr != NULL &&
        PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        res = PyObject_CallFunctionObjArgs(enum_type_getattr, cls, name, NULL);
    }
    return res;
}

static int
rights_type_add(PyObject *m)
{
    PyObject *enum_mod = PyImport_ImportModule("enum");
    if (enum_mod == NULL) {
        return -1;
    }
    PyObject *enum_type = PyObject_GetAttrString(enum_mod, "EnumType");
    Py_DECREF(enum_mod);
    if (enum_type == NULL) {
        return -1;
    }
    if (!PyType_Check(enum_type) ||
        !PyType_IsSubtype((PyTypeObject *)enum_type, &PyType_Type)) {
        Py_DECREF(enum_type);
        PyErr_SetString(PyExc_TypeError, "enum.EnumType is not a metaclass");
        return -1;
    }
    /* Its own __getattr__ only, not one inherited from type (there is none). */
    PyObject *hook = PyDict_GetItemString(((PyTypeObject *)enum_type)->tp_dict, "__getattr__");
    Py_XINCREF(hook);
    Py_XSETREF(enum_type_getattr, hook);
    PyType_Slot slots[] = {
        {Py_tp_getattro, (void *)RightsType_getattro},
        {Py_tp_doc, (void *)"EnumType whose member lookups are one C dict lookup."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "pkeyguard._core.RightsType",
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, enum_type);
    Py_DECREF(enum_type);
    if (bases == NULL) {
        return -1;
    }
    PyObject *t = PyType_FromSpecWithBases(&spec, bases);
    Py_DECREF(bases);
    if (t == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(m, "RightsType", t);
    Py_DECREF(t);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Module functions                                                                     */

static PyObject *
core_cpuid_flags(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    arch_cpuid(&pku, &ospke);
    return Py_BuildValue("(OO)", pku ? Py_True : Py_False, ospke ? Py_True : Py_False);
}

/* Only called by Python after OSPKE was seen and pkey_alloc worked: before that, RDPKRU
 * would raise SIGILL. */
static PyObject *
core_enable_pku(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    arch_cpuid(&pku, &ospke);
    if (ospke) {
        pku_enabled = 1;
        Py_RETURN_TRUE;
    }
    PyErr_SetString(err(E_PKU_UNAVAILABLE), "cannot enable RDPKRU/WRPKRU: CPUID reports OSPKE off");
    return NULL;
}

static PyObject *
core_pku_enabled(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(pku_enabled);
}

static PyObject *
core_rdpkru(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (require_pku() < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(arch_reg_read());
}

/* probe_pkey_alloc() -> 0 if pkey_alloc works here, else its errno.  The probe key is
 * allocated access-disabled (pkey_alloc writes its bits into this thread's PKRU, and
 * pkey_free leaves them) and freed at once. */
static PyObject *
core_probe_pkey_alloc(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    long k = syscall(SYS_pkey_alloc, 0, PKEY_CLOSED);
    if (k < 0) {
        return PyLong_FromLong(errno);
    }
    (void)syscall(SYS_pkey_free, k);
    return PyLong_FromLong(0);
}

/* count_free_keys() -> how many keys pkey_alloc can still hand out (each allocated
 * access-disabled, then all freed). */
static PyObject *
core_count_free_keys(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (require_pku() < 0) {
        return NULL;
    }
    long keys[32];
    int n = 0;
    while (n < 32) {
        long k = syscall(SYS_pkey_alloc, 0, PKEY_CLOSED);
        if (k < 0) {
            break;
        }
        keys[n++] = k;
    }
    for (int i = 0; i < n; i++) {
        (void)syscall(SYS_pkey_free, keys[i]);
    }
    return PyLong_FromLong(n);
}

static PyObject *
core_thread_guards(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    /* This thread's active guards, innermost first. */
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    ThreadStack *s = tls_stack;
    for (GuardObject *g = s ? s->top : NULL; g != NULL; g = g->prev) {
        if (PyList_Append(out, (PyObject *)g) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}


/* _walk_steps(): guards visited so far looking for a thread's guards on a key (tests: a view
 * access costs none, an entry a few, isolated() a few per key, whatever the number of keys). */
static PyObject *
core_walk_steps(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(walk_steps);
}

static PyObject *
core_live_key_count(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(live_key_count);
}

/* memfd_secret_errno(): 0 if memfd_secret(2) works here, else its errno.  The descriptor is
 * closed at once; whether to use secret memory is decided in Python (allocator.py). */
static PyObject *
core_memfd_secret_errno(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
#ifdef SYS_memfd_secret
    int fd = (int)syscall(SYS_memfd_secret, O_CLOEXEC);
    if (fd >= 0) {
        (void)close(fd);
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(errno);
#else
    return PyLong_FromLong(ENOSYS);
#endif
}

/* At interpreter exit (an atexit hook): every secure region still open is released (wiped,
 * then unmapped), except one that a guard is using right now (a daemon thread inside
 * reveal(), say): that one is wiped in place and left mapped with its rights, so the daemon
 * reads zeros instead of faulting. */
static PyObject *
core_wipe_at_exit(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    /* Collect first: releasing runs the test hook (Python code), which may change the list. */
    PyObject *all = PyList_New(0);
    if (all == NULL) {
        return NULL;
    }
    for (MappingObject *m = wipe_list.wipe_next; m != &wipe_list; m = m->wipe_next) {
        if (PyList_Append(all, (PyObject *)m) < 0) {
            Py_DECREF(all);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(all); i++) {
        MappingObject *m = (MappingObject *)PyList_GET_ITEM(all, i);
        if (m->base == 0 || (m->flags & MAP_F_WIPED)) {
            continue;
        }
        BindingObject *b = m->binding;
        if (b != NULL && b->active > 0) {
            const char *what = NULL;
            int e = mapping_scrub(m, 1, &what);
            if (e != 0) {
                raise_errno(e, what);
                write_unraisable("pkeyguard: wiping a secure region in use at exit");
            }
            continue;
        }
        int canary_ok;
        if (mapping_close_now(m, &canary_ok) < 0) {
            write_unraisable("pkeyguard: releasing a secure region at exit");
        }
        else if (!canary_ok) {
            raise_canary(m);
            write_unraisable("pkeyguard: releasing a secure region at exit");
        }
    }
    Py_DECREF(all);
    Py_RETURN_NONE;
}

/* The errors and the rights are registered once per process, by the one pkeyguard package
 * that imported this core.  A second registration (the package's modules removed from
 * sys.modules and imported again, or a direct call) would swap the classes under every live
 * object, so it is refused. */
static int
refuse_second_registration(const char *what, int already)
{
    if (already) {
        PyErr_Format(PyExc_ImportError,
                     "pkeyguard: %s already registered; pkeyguard can be imported only once per "
                     "process (were its modules removed from sys.modules?)",
                     what);
        return -1;
    }
    return 0;
}

static PyObject *
core_set_error_module(PyObject *Py_UNUSED(m), PyObject *module)
{
    if (refuse_second_registration("the error classes are", err_classes[0] != NULL) < 0) {
        return NULL;
    }
    PyObject *found[E_COUNT];
    for (int i = 0; i < E_COUNT; i++) {
        found[i] = PyObject_GetAttrString(module, err_names[i]);
        if (found[i] == NULL || !PyExceptionClass_Check(found[i])) {
            for (int j = 0; j <= i; j++) {
                Py_XDECREF(found[j]);
            }
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "%s is not an exception class", err_names[i]);
            }
            return NULL;
        }
    }
    for (int i = 0; i < E_COUNT; i++) {
        Py_XSETREF(err_classes[i], found[i]);
    }
    Py_RETURN_NONE;
}

/* _register_rights((NoAccess, ReadOnly, ReadWrite), (NoAccessGuard, ReadGuard, WriteGuard)):
 * LEVEL_COUNT of each, in the order of the RIGHTS table. */
static PyObject *
core_register_rights(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *members, *types;
    if (!PyArg_ParseTuple(args, "O!O!:_register_rights", &PyTuple_Type, &members, &PyTuple_Type,
                          &types)) {
        return NULL;
    }
    if (refuse_second_registration("the rights are", rights_members[0] != NULL) < 0) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(members) != LEVEL_COUNT || PyTuple_GET_SIZE(types) != LEVEL_COUNT) {
        PyErr_Format(PyExc_ValueError, "%d rights and %d guard types", LEVEL_COUNT, LEVEL_COUNT);
        return NULL;
    }
    for (int i = 0; i < LEVEL_COUNT; i++) {
        PyObject *t = PyTuple_GET_ITEM(types, i);
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &Guard_Type)) {
            PyErr_SetString(PyExc_TypeError, "guard types must subclass Guard");
            return NULL;
        }
    }
    guard_freelist_drain(); /* memory laid out for the classes registered before */
    for (int i = 0; i < LEVEL_COUNT; i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(types, i);
        guard_recyclable[i] = guard_type_recyclable(t);
        if (guard_recyclable[i]) {
            t->tp_dealloc = (destructor)guard_class_dealloc;
        }
        Py_INCREF(PyTuple_GET_ITEM(members, i));
        Py_XSETREF(rights_members[i], PyTuple_GET_ITEM(members, i));
        Py_INCREF(t);
        Py_XSETREF(guard_types[i], t);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"cpuid_flags", core_cpuid_flags, METH_NOARGS, "(pku, ospke) from CPUID leaf 7."},
    {"enable_pku", core_enable_pku, METH_NOARGS, "Allow RDPKRU/WRPKRU (internal)."},
    {"_pool_stats", core_pool_stats, METH_O,
     "_pool_stats(mode): the hardware-key pool's gauges and counters."},
    {"_pool_limit", core_pool_limit, METH_VARARGS,
     "_pool_limit(mode, n): the most hardware keys the pool may hold; returns the old limit."},
    {"_pool_thread_seen", core_pool_thread_seen, METH_NOARGS,
     "_pool_thread_seen(): register this thread with the key pools now (tests)."},
    {"_pool_sync", core_pool_sync, METH_O,
     "_pool_sync(mode): sync this thread's bits with the pool now, as a guard entry does."},
    {"_sim_pkru", core_sim_pkru, METH_NOARGS, "This thread's simulated PKRU (MODE_SIM)."},
    {"_sim_set_pkru", core_sim_set_pkru, METH_O,
     "Set this thread's simulated PKRU (MODE_SIM; models inheritance at thread creation)."},
    {"pku_enabled", core_pku_enabled, METH_NOARGS, NULL},
    {"rdpkru", core_rdpkru, METH_NOARGS, "This thread's PKRU."},
    {"probe_pkey_alloc", core_probe_pkey_alloc, METH_NOARGS,
     "0 if pkey_alloc works here, else its errno (no key is left allocated)."},
    {"count_free_keys", core_count_free_keys, METH_NOARGS,
     "How many keys pkey_alloc can still hand out (pku only)."},
    {"thread_guards", core_thread_guards, METH_NOARGS, "This thread's active guards, innermost first."},
    {"live_key_count", core_live_key_count, METH_NOARGS, "Open keys (pku and mprotect)."},
    {"_walk_steps", core_walk_steps, METH_NOARGS,
     "Guards visited looking for a thread's guards on a key, since the start (tests)."},
    {"isolation", core_isolation, METH_O, "isolation(allow): NoAccess on every other open key."},
    {"wipe_at_exit", core_wipe_at_exit, METH_NOARGS, NULL},
    {"memfd_secret_errno", core_memfd_secret_errno, METH_NOARGS,
     "0 if memfd_secret(2) works here, else the errno it gave."},
    {"_set_error_module", core_set_error_module, METH_O, NULL},
    {"_register_rights", core_register_rights, METH_VARARGS, NULL},
    {"faults_install", faults_install, METH_NOARGS, "Install the fault reporter."},
    {"faults_uninstall", faults_uninstall, METH_NOARGS, NULL},
    {"faults_installed", faults_installed, METH_NOARGS, "Whether the reporter is the SIGSEGV handler now."},
    {NULL, NULL, 0, NULL},
};

/* Multi-phase init.  The core's state (the types, the thread stacks, the registries of open
 * keys and secure regions) is process-wide and relies on the GIL for atomicity, so the
 * module says so: one interpreter only, and on a free-threaded build it keeps the GIL on. */
static int core_executed;

static int
core_exec(PyObject *m)
{
    /* Py_mod_multiple_interpreters only stops isolated subinterpreters; a legacy one (shared
     * GIL) would run this again and re-register the errors and rights of its own copy of the
     * package under the main interpreter's objects.  So: the main interpreter, once. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "pkeyguard._core can be imported only in the main interpreter (its state "
                        "is process-wide); subinterpreters are not supported");
        return -1;
    }
    if (core_executed) {
        PyErr_SetString(PyExc_ImportError,
                        "pkeyguard._core is already loaded in this process and cannot be loaded "
                        "again (its state is process-wide; was it removed from sys.modules?)");
        return -1;
    }
    page_size = sysconf(_SC_PAGESIZE);
    pools_init();
    if (stack_dict_key == NULL) {
        stack_dict_key = PyUnicode_InternFromString("pkeyguard._core.thread_stack");
        if (stack_dict_key == NULL) {
            return -1;
        }
    }
    if (str_value == NULL) {
        str_value = PyUnicode_InternFromString("value");
        if (str_value == NULL) {
            return -1;
        }
    }
    if (rights_type_add(m) < 0) {
        return -1;
    }
    if (!(Guard_Type.tp_flags & Py_TPFLAGS_READY)) {
        if (PyType_Ready(&Guard_Type) < 0 || guard_install_slots() < 0) {
            return -1;
        }
    }
    if (PyType_Ready(&Key_Type) < 0 || PyType_Ready(&Mapping_Type) < 0 ||
        PyType_Ready(&Binding_Type) < 0 || PyType_Ready(&View_Type) < 0 ||
        PyType_Ready(&Group_Type) < 0 || PyType_Ready(&StackOwner_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Key", (PyObject *)&Key_Type) < 0 ||
        PyModule_AddObjectRef(m, "Mapping", (PyObject *)&Mapping_Type) < 0 ||
        PyModule_AddObjectRef(m, "Binding", (PyObject *)&Binding_Type) < 0 ||
        PyModule_AddObjectRef(m, "Guard", (PyObject *)&Guard_Type) < 0 ||
        PyModule_AddObjectRef(m, "View", (PyObject *)&View_Type) < 0 ||
        PyModule_AddIntConstant(m, "MODE_NOP", MODE_NOP) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PKU", MODE_PKU) < 0 ||
        PyModule_AddIntConstant(m, "MODE_MPROTECT", MODE_MPROTECT) < 0 ||
        PyModule_AddIntConstant(m, "MODE_SIM", MODE_SIM) < 0 ||
        PyModule_AddIntConstant(m, "PAGE_SIZE", page_size) < 0 ||
        PyModule_AddIntConstant(m, "PROT_NONE", PROT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_READ", PROT_READ) < 0 ||
        PyModule_AddIntConstant(m, "PROT_WRITE", PROT_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_EXEC", PROT_EXEC) < 0) {
        return -1;
    }
    /* fork_child(): zero pages in a fork child where secret memory was (see "Fork"). */
    static int atfork_registered = 0;
    if (!atfork_registered) {
        int e = pthread_atfork(NULL, NULL, fork_child);
        if (e != 0) {
            raise_errno(e, "pthread_atfork");
            return -1;
        }
        atfork_registered = 1;
    }
    PyObject *max_size = PyLong_FromSize_t(MAX_REGION_SIZE);
    if (max_size == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(m, "MAX_REGION_SIZE", max_size);
    Py_DECREF(max_size);
    if (rc < 0) {
        return -1;
    }
    /* RIGHTS: ((name, pkru_bits), ...) by level, from the one table in _rights.h. */
    PyObject *rights = PyTuple_New(LEVEL_COUNT);
    if (rights == NULL) {
        return -1;
    }
    for (int level = 0; level < LEVEL_COUNT; level++) {
        PyObject *row = Py_BuildValue("(sI)", RIGHTS[level].name, RIGHTS[level].bits);
        if (row == NULL) {
            Py_DECREF(rights);
            return -1;
        }
        PyTuple_SET_ITEM(rights, level, row);
    }
    rc = PyModule_AddObjectRef(m, "RIGHTS", rights);
    Py_DECREF(rights);
    if (rc == 0) {
        core_executed = 1;
    }
    return rc;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard._core",
    .m_doc = "Native core of pkeyguard: pkey syscalls, PKRU access, keys, memory, guards and "
             "views.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
