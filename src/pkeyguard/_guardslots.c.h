/*
 * The guard's __enter__/__exit__ fast path, included by _guards.c after Guard_enter and
 * Guard_exit (a ".c.h" file, as CPython names them: part of that translation unit; only
 * guard_install_slots is called from outside it, by the module's setup).
 *
 * With __enter__/__exit__ as PyMethodDef entries, CPython's 'with' (BEFORE_WITH) makes a
 * bound builtin method for each, every time: a GC-tracked allocation, tracked and untracked
 * twice per block.  Here the type's __enter__/__exit__ are descriptors whose __get__ returns
 * a small untracked callable holding a strong reference to the guard, recycled through a
 * freelist.  PKEYGUARD_BOUNDSLOT (default: see below) picks this path or the plain methods;
 * the benchmark's floor.nop_cm and switch.guard rows measure the difference (see
 * benchmarks/README.md, "BoundSlot").
 */
#ifndef PKEYGUARD_GUARDSLOTS_H
#define PKEYGUARD_GUARDSLOTS_H

#ifndef PKEYGUARD_BOUNDSLOT
#define PKEYGUARD_BOUNDSLOT 1
#endif

#if PKEYGUARD_BOUNDSLOT

typedef struct BoundSlotObject {
    PyObject_HEAD
    GuardObject *guard; /* strong */
    int which;          /* 0: __enter__, 1: __exit__ */
    vectorcallfunc vectorcall;
    struct BoundSlotObject *next_free;
} BoundSlotObject;

#define BOUNDSLOT_FREELIST_MAX 16
static BoundSlotObject *boundslot_free = NULL; /* protected by the GIL */
static int boundslot_nfree = 0;

static PyObject *
BoundSlot_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                     PyObject *kwnames)
{
    BoundSlotObject *b = BoundSlot_CAST(op);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_SetString(PyExc_TypeError, "guard methods take no keyword arguments");
        return NULL;
    }
    if (b->which == 0) {
        if (nargs != 0) {
            PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
            return NULL;
        }
        return Guard_enter((PyObject *)b->guard, NULL);
    }
    return Guard_exit((PyObject *)b->guard, args, nargs);
}

static void
BoundSlot_dealloc(PyObject *op)
{
    BoundSlotObject *b = BoundSlot_CAST(op);
    Py_CLEAR(b->guard);
    if (boundslot_nfree < BOUNDSLOT_FREELIST_MAX) {
        b->next_free = boundslot_free;
        boundslot_free = b;
        boundslot_nfree++;
        return;
    }
    PyObject_Free(b);
}

static PyObject *
BoundSlot_repr(PyObject *op)
{
    BoundSlotObject *b = BoundSlot_CAST(op);
    return PyUnicode_FromFormat("<%s of %R>", b->which ? "__exit__" : "__enter__",
                                (PyObject *)b->guard);
}

static PyTypeObject BoundSlot_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.guard_method",
    .tp_basicsize = sizeof(BoundSlotObject),
    .tp_dealloc = BoundSlot_dealloc,
    .tp_repr = BoundSlot_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(BoundSlotObject, vectorcall),
    .tp_call = PyVectorcall_Call,
};

typedef struct {
    PyObject_HEAD
    int which;
    vectorcallfunc vectorcall;
} SlotDescrObject;

static PyObject *
SlotDescr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    SlotDescrObject *d = SlotDescr_CAST(op);
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(d);
        return (PyObject *)d;
    }
    if (!PyObject_TypeCheck(obj, &Guard_Type)) {
        PyErr_Format(PyExc_TypeError, "guard method bound to a non-guard %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    BoundSlotObject *b = boundslot_free;
    if (b != NULL) {
        boundslot_free = b->next_free;
        boundslot_nfree--;
        (void)PyObject_Init((PyObject *)b, &BoundSlot_Type);
    }
    else {
        b = PyObject_New(BoundSlotObject, &BoundSlot_Type);
        if (b == NULL) {
            return NULL;
        }
    }
    Py_INCREF(obj);
    b->guard = (GuardObject *)obj;
    b->which = d->which;
    b->vectorcall = BoundSlot_vectorcall;
    b->next_free = NULL;
    return (PyObject *)b;
}

static PyObject *
SlotDescr_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                     PyObject *Py_UNUSED(kwnames))
{
    SlotDescrObject *d = SlotDescr_CAST(op);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !PyObject_TypeCheck(args[0], &Guard_Type)) {
        PyErr_SetString(PyExc_TypeError, "unbound guard method needs a guard");
        return NULL;
    }
    GuardObject *g = (GuardObject *)args[0];
    if (d->which == 0) {
        if (nargs != 1) {
            PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
            return NULL;
        }
        return Guard_enter((PyObject *)g, NULL);
    }
    return Guard_exit((PyObject *)g, args + 1, nargs - 1);
}

static PyTypeObject SlotDescr_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.guard_slot",
    .tp_basicsize = sizeof(SlotDescrObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(SlotDescrObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = SlotDescr_get,
};

int
guard_install_slots(void)
{
    static const char *names[2] = {"__enter__", "__exit__"};
    if (PyType_Ready(&BoundSlot_Type) < 0 || PyType_Ready(&SlotDescr_Type) < 0) {
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        SlotDescrObject *d = PyObject_New(SlotDescrObject, &SlotDescr_Type);
        if (d == NULL) {
            return -1;
        }
        d->which = i;
        d->vectorcall = SlotDescr_vectorcall;
        int rc = PyDict_SetItemString(Guard_Type.tp_dict, names[i], (PyObject *)d);
        Py_DECREF(d);
        if (rc < 0) {
            return -1;
        }
    }
    PyType_Modified(&Guard_Type);
    return 0;
}

#else /* plain methods: CPython binds them on each 'with' */

static PyMethodDef guard_plain_slots[2] = {
    {"__enter__", Guard_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Guard_exit, METH_FASTCALL, NULL},
};

int
guard_install_slots(void)
{
    for (int i = 0; i < 2; i++) {
        PyObject *d = PyDescr_NewMethod(&Guard_Type, &guard_plain_slots[i]);
        if (d == NULL) {
            return -1;
        }
        int rc = PyDict_SetItemString(Guard_Type.tp_dict, guard_plain_slots[i].ml_name, d);
        Py_DECREF(d);
        if (rc < 0) {
            return -1;
        }
    }
    PyType_Modified(&Guard_Type);
    return 0;
}

#endif /* PKEYGUARD_BOUNDSLOT */

#endif /* PKEYGUARD_GUARDSLOTS_H */
