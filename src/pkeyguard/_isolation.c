/*
 * pkeyguard._core, isolation: NoAccess on every open key but an allow-list, entered and left as
 * one unit (a Group of key-wide guards).
 *
 * Ownership: a Group holds its allow-list and, while active, the guards it entered (one per
 * key of the registry in _keys.c that is not allowed); they are left in reverse order, as one
 * change, on the entering thread.
 */
#include "_core.h"

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
Group_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    GroupObject *grp = Group_CAST(op);
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
        if (o->exports <= 0 || !rights_reads(o->level)) {
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
Group_exit(PyObject *op, PyObject *Py_UNUSED(args))
{
    GroupObject *grp = Group_CAST(op);
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
Group_dealloc(PyObject *op)
{
    GroupObject *grp = Group_CAST(op);
    Py_CLEAR(grp->allow);
    Py_CLEAR(grp->guards);
    Py_TYPE(grp)->tp_free((PyObject *)grp);
}

static PyMethodDef Group_methods[] = {
    {"__enter__", Group_enter, METH_NOARGS, NULL},
    {"__exit__", Group_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject Group_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.isolation",
    .tp_basicsize = sizeof(GroupObject),
    .tp_dealloc = Group_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NoAccess guards on every open key but an allow-list, entered and left as one.",
    .tp_methods = Group_methods,
};

PyObject *
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
