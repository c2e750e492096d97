/*
 * pkeyguard._core, bindings: the Binding type (AssociatedRegion is its Python subclass), the
 * link between one Mapping and one Key, made by Key._bind (tagging the pages) and ended by
 * binding_end (_keys.c: untagging them); its guards (set_access_rights, _guard).
 *
 * Ownership: the Mapping and the Binding hold each other while bound, and the Binding holds
 * the Key; the Key lists the Binding (borrowed).  A binding with active guards cannot end.
 * Every refusal that protects memory is checked in the same C call that makes the change,
 * with the GIL held and before anything can run Python code: allocate, then check, then change.
 */
#include "_core.h"

/* ------------------------------------------------------------------------------------ */
/* Binding                                                                              */

/* _bind(mapping, cls): the one way to associate a region with a key.  Tags the pages and
 * links key, binding and mapping in one step. */
PyObject *
Key_bind(PyObject *op, PyObject *args)
{
    KeyObject *k = Key_CAST(op);
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
Binding_traverse(PyObject *op, visitproc visit, void *arg)
{
    BindingObject *b = Binding_CAST(op);
    Py_VISIT(b->key);
    Py_VISIT(b->mapping);
    return 0;
}

static int
Binding_clear(PyObject *op)
{
    BindingObject *b = Binding_CAST(op);
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
Binding_dealloc(PyObject *op)
{
    BindingObject *b = Binding_CAST(op);
    PyObject_GC_UnTrack(b);
    /* A live binding is held by its mapping: none reaches its deallocator live. */
    Py_CLEAR(b->key);
    Py_CLEAR(b->mapping);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* _unbind(): untag the pages (back to key 0 and the region's own rights).  Refused while a
 * guard of this association is active. */
static PyObject *
Binding_unbind(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    BindingObject *b = Binding_CAST(op);
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
Binding_get_key(PyObject *op, void *Py_UNUSED(c))
{
    BindingObject *b = Binding_CAST(op);
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
Binding_get_mapping(PyObject *op, void *Py_UNUSED(c))
{
    BindingObject *b = Binding_CAST(op);
    if (b->mapping == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(b->mapping);
    return (PyObject *)b->mapping;
}

static PyMethodDef Binding_methods[] = {
    {"set_access_rights", Binding_set_access_rights, METH_O,
     "A new guard that, inside ``with``, gives this thread ``rights`` to the key's memory.\n\n"
     "Entering writes PKRU (pku) or re-protects the key's regions (mprotect); leaving restores\n"
     "exactly what entering changed.  Guards nest (LIFO) and are bound to the thread that\n"
     "entered them.  Each call returns a new guard, which may be entered again once it has\n"
     "exited (never twice at once)."},
    {"_guard", Binding_guard, METH_VARARGS, NULL},
    {"_unbind", Binding_unbind, METH_NOARGS, NULL},
    {"_end_stuck", Binding_end_stuck, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

/* _register_association(cls): give cls its own set_access_rights, the same C function as
 * Binding's.  CPython's specialised call of a one-argument C method (CALL_METHOD_DESCRIPTOR_O;
 * 3.11's PRECALL_NO_KW_METHOD_DESCRIPTOR_O) checks that type(self) is exactly the method's
 * class, so a method inherited from Binding made every assoc.set_access_rights(...) call on
 * an AssociatedRegion fall back to the generic call (a vectorcall through the descriptor and
 * a subtype check per call).  A descriptor of cls's own, in cls's dict, passes that check. */
PyObject *
core_register_association(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (!PyType_Check(arg) || !PyType_IsSubtype((PyTypeObject *)arg, &Binding_Type) ||
        (PyTypeObject *)arg == &Binding_Type) {
        PyErr_SetString(PyExc_TypeError, "_register_association() needs a Binding subclass");
        return NULL;
    }
    PyMethodDef *def = &Binding_methods[0];
    assert(strcmp(def->ml_name, "set_access_rights") == 0);
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)arg, def);
    if (descr == NULL) {
        return NULL;
    }
    int rc = PyObject_SetAttrString(arg, def->ml_name, descr);
    Py_DECREF(descr);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMemberDef Binding_members[] = {
    {"associated", T_BOOL, offsetof(BindingObject, live), READONLY,
     "whether the region is still tagged with the key"},
    {"_active", T_PYSSIZET, offsetof(BindingObject, active), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Binding_getset[] = {
    {"_key", Binding_get_key, NULL, NULL, NULL},
    {"_mapping", Binding_get_mapping, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Binding_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Binding",
    .tp_basicsize = sizeof(BindingObject),
    .tp_dealloc = Binding_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A region tagged with a key (internal base of AssociatedRegion).",
    .tp_traverse = Binding_traverse,
    .tp_clear = Binding_clear,
    .tp_methods = Binding_methods,
    .tp_members = Binding_members,
    .tp_getset = Binding_getset,
};
