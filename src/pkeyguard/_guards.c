/*
 * pkeyguard._core, guards and the per-thread guard stacks: the Guard type and its recycled
 * classes, entry and exit (guard_apply/guard_restore: one WRPKRU on pku, the key's level on
 * mprotect), the same-key chains, stuck exits, Key._guard, and the with-statement fast path
 * (_guardslots.c.h, included below).  This is the hot path: its helpers stay in this unit or
 * static inline in the headers.
 *
 * Ownership: a Guard switches the calling thread's rights for one key while active.  Each
 * thread has a stack of its active guards (the stack holds a reference to each), owned by an
 * object in the thread's state dict: when the thread ends (or a fork child drops it), its
 * guards are ended.  Ownership is that stack, never a reusable thread ident.  A guard holds
 * its key and binding; guards are thread-bound and LIFO.
 * Every refusal that protects memory is checked in the same C call that makes the change,
 * with the GIL held and before anything can run Python code: allocate, then check, then change.
 */
#include "_core.h"

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

PyObject *stack_dict_key; /* interned "pkeyguard._core.thread_stack" */

static void stack_abandon(ThreadStack *s);

static void
StackOwner_dealloc(PyObject *op)
{
    StackOwnerObject *o = StackOwner_CAST(op);
    ThreadStack *s = o->stack;
    o->stack = NULL;
    if (s != NULL) {
        stack_abandon(s);
        PyMem_RawFree(s);
    }
    PyObject_Free(o);
}

PyTypeObject StackOwner_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.thread_stack",
    .tp_basicsize = sizeof(StackOwnerObject),
    .tp_dealloc = StackOwner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* This thread's stack, made on first use.  May run arbitrary code (allocation can start the
 * GC), so callers call it before they check anything. */
ThreadStack *
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
/* Guard (declarations needed by Binding)                                              */

/* Fork child (from fork_child, so only memory writes): the forking thread keeps its guards,
 * but a guard over secure memory (WIPEONFORK or memfd_secret) now covers zero pages, so the
 * views it handed out must not read them as if they were the secret: a new generation
 * expires them, and view_check says why.  The guards stay active, so the 'with' blocks still
 * exit normally in the child; a memoryview taken before the fork is a leftover export, as
 * after any guard's exit. */
void
fork_child_expire_secure_views(void)
{
    for (GuardObject *g = tls_stack != NULL ? tls_stack->top : NULL; g != NULL; g = g->prev) {
        MappingObject *m = g->binding != NULL ? g->binding->mapping : NULL;
        if (m != NULL && mapping_fork_gets_no_bytes(m)) {
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
int
fork_child_writing(MappingObject *m)
{
    BindingObject *b = m->binding;
    if (b == NULL || b->key == NULL || tls_stack == NULL) {
        return 0; /* a guard holds its binding: none is active over an unbound mapping */
    }
    GuardObject *r = key_thread_root(b->key, tls_stack);
    for (GuardObject *g = r != NULL ? r->innermost : NULL; g != NULL; g = g->same_outer) {
        walk_steps++;
        if (rights_writes(g->level) && g->binding != NULL && g->binding->mapping == m) {
            return 1;
        }
    }
    return 0;
}

/* The rights members and guard classes, registered by pkeyguard at import. */
PyObject *rights_members[LEVEL_COUNT];
PyTypeObject *guard_types[LEVEL_COUNT];

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
int guard_recyclable[LEVEL_COUNT];

int
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

void
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

static void Guard_dealloc(PyObject *op);

/* The deallocator of the registered guard classes.  CPython gives a Python class
 * subtype_dealloc, which walks the bases, checks for finalizers, weak references, __dict__
 * and __slots__, and guards against deep recursion, on every guard that set_access_rights()
 * made and its caller dropped.  The registered classes have no weak references, __dict__ or
 * __slots__ (checked at registration).  A __del__ can still be set on the class later: it
 * runs here as subtype_dealloc would run it. */
void
guard_class_dealloc(PyObject *op)
{
    GuardObject *g = Guard_CAST(op);
    if (Py_TYPE(g)->tp_finalize != NULL &&
        PyObject_CallFinalizerFromDealloc((PyObject *)g) < 0) {
        return; /* the finalizer resurrected it */
    }
    PyTypeObject *t = Py_TYPE(g); /* read again: a finalizer may have changed it */
    PyObject_GC_UnTrack(g);
    Guard_dealloc((PyObject *)g);
    Py_DECREF(t); /* an instance of a heap type holds its type */
}

static inline GuardObject *
guard_make(PyTypeObject *cls, KeyObject *k, BindingObject *b, int level, PyObject *enter_view)
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

/* guard_make for the other units (isolation); set_access_rights() below inlines it. */
GuardObject *
guard_create(PyTypeObject *cls, KeyObject *k, BindingObject *b, int level, PyObject *enter_view)
{
    return guard_make(cls, k, b, level, enter_view);
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

/* ---- The Binding methods that make guards (hot: set_access_rights is one C call) ------- */

static PyObject *
binding_new_guard(BindingObject *b, int level, PyTypeObject *cls, PyObject *enter_view)
{
    if (!b->live) {
        return PyErr_Format(err(E_REGION),
                            "%R is no longer associated with a key: associate the region again "
                            "and use the new association",
                            (PyObject *)b->mapping);
    }
    return (PyObject *)guard_make(cls, b->key, b, level, enter_view);
}

/* set_access_rights(rights): a new guard (never shared) of the class for those rights. */
PyObject *
Binding_set_access_rights(PyObject *op, PyObject *rights)
{
    BindingObject *b = Binding_CAST(op);
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
PyObject *
Binding_guard(PyObject *op, PyObject *args)
{
    BindingObject *b = Binding_CAST(op);
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

void
released_init(Released *r)
{
    r->items = r->small;
    r->n = 0;
    r->cap = (Py_ssize_t)(sizeof(r->small) / sizeof(r->small[0]));
}

/* Room for `need` more guards.  PyMem_Malloc runs no Python code (it never starts the
 * collector), so it may come right before a change; on failure nothing was changed. */
int
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
void
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
            if (!rights_reads(g->level)) {
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
        if (rights_reads(g->level)) {
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
        if (rights_reads(g->level)) {
            k->slot.opening--;
            assert(k->slot.opening >= 0);
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
        assert(k->counts[g->level] >= 0);
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
PyObject *
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
int
guard_pop(GuardObject *g, int write_pkru, int apply, int force, Released *r)
{
    int rc = guard_restore(g, write_pkru, apply, force);
    if (rc != 0 && !force) {
        return rc;
    }
    ThreadStack *s = g->stack;
    assert(s->top == g && g->depth == s->depth); /* the top of its own stack */
    assert(g->prev == NULL || g->prev->depth == g->depth - 1);
    s->top = g->prev;
    s->depth--;
    same_key_pop(g);
    guard_retire(g, r);
    return rc;
}

Py_ssize_t
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
int
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
    assert(s->top == NULL ? s->depth == 0 : s->top->depth == s->depth);
    g->prev = s->top;
    Py_INCREF(g); /* the stack's reference */
    s->top = g;
    g->depth = ++s->depth;
    same_key_push(g, root);
    return 0;
}

/* Raise what guard_activate() reported, once the state is consistent.  May run Python code
 * (a repr, the error class): g and whatever *f names are held here meanwhile. */
void
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

static PyObject *
Guard_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    GuardObject *g = Guard_CAST(op);
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

PyObject *
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
Py_ssize_t
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
void
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
void
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
            if (rights_reads(g->level)) {
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
PyObject *
Binding_end_stuck(PyObject *op, PyObject *arg)
{
    BindingObject *b = Binding_CAST(op);
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
Guard_exit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    GuardObject *g = Guard_CAST(op);
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
Guard_dealloc(PyObject *op)
{
    GuardObject *g = Guard_CAST(op);
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
Guard_get_thread(PyObject *op, void *Py_UNUSED(closure))
{
    GuardObject *g = Guard_CAST(op);
    if (!g->active) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(g->thread);
}

static PyObject *
Guard_get_binding(PyObject *op, void *Py_UNUSED(closure))
{
    GuardObject *g = Guard_CAST(op);
    if (g->binding == NULL || key_owned(g->key)) {
        Py_RETURN_NONE; /* a Secret's association (and so its key and region): not exposed */
    }
    Py_INCREF(g->binding);
    return (PyObject *)g->binding;
}

static PyObject *
Guard_get_key(PyObject *op, void *Py_UNUSED(closure))
{
    GuardObject *g = Guard_CAST(op);
    if (key_owned(g->key)) {
        return raise_hidden("key");
    }
    Py_INCREF(g->key);
    return (PyObject *)g->key;
}

static PyObject *
Guard_repr(PyObject *op)
{
    GuardObject *g = Guard_CAST(op);
    return PyUnicode_FromFormat("<%s key=%lld rights=%s %s>", Py_TYPE(g)->tp_name, g->key->id,
                                RIGHTS[g->level].name, g->active ? "active" : "inactive");
}

/* _view(writable): a view of the guard's region for this activation (ref_guard and
 * mut_ref_guard call it after their own clearer checks; these are the ones that hold). */
static PyObject *
Guard_view(PyObject *op, PyObject *arg)
{
    GuardObject *g = Guard_CAST(op);
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
    else if (!rights_reads(g->level)) {
        cls = E_ACCESS;
        why = "a NoAccess guard grants no view";
    }
    else if (writable && !rights_writes(g->level)) {
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
    {"_new_view", Guard_view, METH_O, NULL},
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
    {"thread", Guard_get_thread, NULL, "ident of the thread that holds it, or None",
     NULL},
    {"_binding", Guard_get_binding, NULL, NULL, NULL},
    {"key", Guard_get_key, NULL,
     "the key this guard switches (not exposed for a Secret's guards)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Guard_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_dealloc = Guard_dealloc,
    .tp_repr = Guard_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Switches this thread's rights for one key while active (internal base).",
    .tp_methods = Guard_methods,
    .tp_members = Guard_members,
    .tp_getset = Guard_getset,
};

/* Key._guard(level): a key-wide guard (no views); the benchmark's floors use it. */
PyObject *
Key_guard(PyObject *op, PyObject *arg)
{
    KeyObject *k = Key_CAST(op);
    long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!rights_level_valid(level)) {
        return PyErr_Format(PyExc_ValueError, "unknown rights level %ld", level);
    }
    return (PyObject *)guard_create(&Guard_Type, k, NULL, (int)level, NULL);
}

#include "_guardslots.c.h"
