/*
 * pkeyguard._core, keys: the Key type, the registry of open keys (isolation walks it), the
 * mprotect backend's per-key level (key_apply_level), the page plan (page_plan: the one
 * decision of a mapping's rights and tag), ending a binding (binding_end) and freeing a key.
 * The pool of hardware numbers behind pku/sim keys is _keypool.c.
 *
 * Ownership: a Key is a protection key (pkey_alloc'ed on pku, a logical number on mprotect);
 * freed when closed or collected, always after the pages tagged with it are untagged (a freed
 * number that still tags pages would reach them once reused).  It lists its live Bindings
 * (borrowed); each Binding holds the Key, so a Key is never freed while its pages are tagged.
 * A key that belongs to a Secret (autoclose) is never handed out, closed or re-bound by hand.
 * Closing is refused while any guard on the key is active.
 * Every refusal that protects memory is checked in the same C call that makes the change,
 * with the GIL held and before anything can run Python code: allocate, then check, then change.
 */
#include "_core.h"

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
int
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
    if (rights_reads(level) && m->exports == 0 &&
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

int
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

/* The rights and tag that pages with their own rights own_prot must have now, bound to k (NULL:
 * unbound), in every mode: a mapping's own rights, narrowed to the key's process-wide level
 * (mprotect), or closed while its key is parked (pku, sim); on pku the key's number, or key 0
 * while parked.  Key_bind, Mapping_protect and the fork child's handlers all ask this. */
PagePlan
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

/* Apply a plan to m's pages: 0, or -1 with errno set. */
int
page_plan_apply(MappingObject *m, PagePlan d)
{
    long rc = d.pkey >= 0 ? sys_pkey_mprotect((void *)m->addr, m->len, d.prot, d.pkey)
                          : mprotect((void *)m->addr, m->len, (int)d.prot);
    return rc == 0 ? 0 : -1;
}

int
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

/* Drop what binding_end() gave up, keeping the exception being raised (if any); then raise
 * the untag's error, unless one is already being raised.  -1 if the untag failed. */
int
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

int
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
            rc = sys_pkey_mprotect((void *)m->addr, m->len, prot, 0);
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
int
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

PyObject *
refuse_owned(int which, const char *what)
{
    PyErr_Format(err(which),
                 "this key belongs to a Secret and cannot be %s by hand; close the Secret "
                 "instead",
                 what);
    return NULL;
}

PyObject *
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
Key_dealloc(PyObject *op)
{
    KeyObject *k = Key_CAST(op);
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
Key_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    KeyObject *k = Key_CAST(op);
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
Key_get_bindings(PyObject *op, void *Py_UNUSED(closure))
{
    KeyObject *k = Key_CAST(op);
    PyObject *out = PyTuple_New(k->nbindings);
    if (out == NULL) {
        return NULL;
    }
    /* PyTuple_New above may have run the GC; the list cannot change from here on. */
    if (PyTuple_GET_SIZE(out) != k->nbindings) {
        Py_DECREF(out);
        return Key_get_bindings(op, NULL);
    }
    for (Py_ssize_t i = 0; i < k->nbindings; i++) {
        Py_INCREF(k->bindings[i]);
        PyTuple_SET_ITEM(out, i, (PyObject *)k->bindings[i]);
    }
    return out;
}

static PyObject *
Key_repr(PyObject *op)
{
    KeyObject *k = Key_CAST(op);
    static const char *modes[] = {"nop", "pku", "mprotect", "sim"};
    return PyUnicode_FromFormat("<_core.Key %lld mode=%s hw=%d active=%zd regions=%zd%s>", k->id,
                                modes[k->mode], k->slot.hw, k->active, k->nbindings,
                                k->closed ? " closed" : "");
}

/* _thread_level(): this thread's rights through the key now (pku/sim: its number's PKRU bits,
 * none while parked; mprotect: the process-wide level). */
static PyObject *
Key_thread_level(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    KeyObject *k = Key_CAST(op);
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
Key_get_hardware_key(PyObject *op, void *Py_UNUSED(closure))
{
    KeyObject *k = Key_CAST(op);
    if (!mode_is_pool(k->mode) || k->slot.hw < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(k->slot.hw);
}

static PyObject *
Key_set_autoclose(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    KeyObject *k = Key_CAST(op);
    k->autoclose = 1;
    Py_RETURN_NONE;
}

static PyMethodDef Key_methods[] = {
    {"_set_autoclose", Key_set_autoclose, METH_NOARGS,
     "Free the key as soon as its last association ends (library-owned keys)."},
    {"_bind", Key_bind, METH_VARARGS,
     "_bind(mapping, cls): tag the mapping's pages with this key; returns the binding."},
    {"_close", Key_close, METH_NOARGS,
     "Untag every region, then free the key (idempotent; refused while guards are active)."},
    {"_guard", Key_guard, METH_O,
     "_guard(level): a key-wide guard (no views), for benchmarks floors."},
    {"_thread_level", Key_thread_level, METH_NOARGS,
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
    {"_bindings", Key_get_bindings, NULL, "the live bindings", NULL},
    {"hardware_key", Key_get_hardware_key, NULL,
     "the hardware key number it holds now (pku), or None: parked, or not a pku key", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Key_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_dealloc = Key_dealloc,
    .tp_repr = Key_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A protection key (internal base of PkeyGuard).",
    .tp_methods = Key_methods,
    .tp_members = Key_members,
    .tp_getset = Key_getset,
    .tp_new = Key_new,
};
