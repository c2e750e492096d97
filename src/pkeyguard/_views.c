/*
 * pkeyguard._core, views: the View type, typed or byte access to a bound Mapping (scalars,
 * bytes, composites, buffer exports).
 *
 * Ownership: a View holds its guard; it is valid only in the activation of the guard that
 * made it (the guard's generation), on that guard's thread.  Every access converts its
 * arguments first (running any user code), then checks, then touches memory, with no Python
 * code in between.  Buffer exports are counted on the guard and the Mapping (a Mapping with
 * live exports keeps its range reserved when released).
 */
#include "_core.h"

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

ViewObject *
view_alloc(PyTypeObject *cls)
{
    return (ViewObject *)cls->tp_alloc(cls, 0);
}

void
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
        if (g->active && m != NULL && mapping_fork_gets_no_bytes(m) &&
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
        if (!(write ? rights_writes(level) : rights_reads(level))) {
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
View_get_value(PyObject *op, void *Py_UNUSED(closure))
{
    ViewObject *v = View_CAST(op);
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
View_set_value(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    ViewObject *v = View_CAST(op);
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
View_length(PyObject *op)
{
    ViewObject *v = View_CAST(op);
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
View_subscript(PyObject *op, PyObject *item)
{
    ViewObject *v = View_CAST(op);
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
View_ass_subscript(PyObject *op, PyObject *item, PyObject *value)
{
    ViewObject *v = View_CAST(op);
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
View_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    ViewObject *v = View_CAST(op);
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
        v->writable && (g->root->innermost == g || rights_writes(view_rights_now(v)));
    if (PyBuffer_FillInfo(view, (PyObject *)v, v->addr, v->size, !can_write, flags) < 0) {
        return -1;
    }
    v->exports++;
    g->exports++;
    g->binding->mapping->exports++;
    return 0;
}

static void
View_releasebuffer(PyObject *op, Py_buffer *Py_UNUSED(view))
{
    ViewObject *v = View_CAST(op);
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
View_tobytes(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ViewObject *v = View_CAST(op);
    return checked_copy_out(v, v->addr, v->size);
}

static PyObject *
View_check(PyObject *op, PyObject *write)
{
    ViewObject *v = View_CAST(op);
    int w = PyObject_IsTrue(write);
    if (w < 0 || view_check(v, w) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _read(offset, length) -> bytes: a checked copy of part of the value (composite views). */
static PyObject *
View_read(PyObject *op, PyObject *args)
{
    ViewObject *v = View_CAST(op);
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
View_write(PyObject *op, PyObject *args)
{
    ViewObject *v = View_CAST(op);
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
View_get_valid(PyObject *op, void *Py_UNUSED(closure))
{
    ViewObject *v = View_CAST(op);
    GuardObject *g = v->guard;
    return PyBool_FromLong(g->active && g->generation == v->generation &&
                           g->stack == tls_stack);
}

static PyObject *
View_get_ctype(PyObject *op, void *Py_UNUSED(closure))
{
    ViewObject *v = View_CAST(op);
    PyObject *t = v->ctype ? v->ctype : Py_None;
    Py_INCREF(t);
    return t;
}

static PyObject *
View_repr(PyObject *op)
{
    ViewObject *v = View_CAST(op);
    return PyUnicode_FromFormat("<%s %zd bytes format=%c %s%s>", Py_TYPE(v)->tp_name, v->size,
                                v->fmt, v->writable ? "read-write" : "read-only",
                                (v->guard->active && v->guard->generation == v->generation)
                                    ? "" : " (expired)");
}

static void
View_dealloc(PyObject *op)
{
    ViewObject *v = View_CAST(op);
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
PyObject *str_value; /* interned "value" */

static PyObject *
View_getattro(PyObject *op, PyObject *name)
{
    ViewObject *v = View_CAST(op);
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
View_setattro(PyObject *op, PyObject *name, PyObject *value)
{
    ViewObject *v = View_CAST(op);
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
    {"tobytes", View_tobytes, METH_NOARGS, "Copy the bytes out."},
    {"check", View_check, METH_O, "Raise unless usable (write=True: writable)."},
    {"_read", View_read, METH_VARARGS, NULL},
    {"_write", View_write, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef View_getset[] = {
    {"value", View_get_value, View_set_value, "the value", NULL},
    {"valid", View_get_valid, NULL, "usable now, on this thread", NULL},
    {"_ctype", View_get_ctype, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef View_members[] = {
    {"writable", T_BOOL, offsetof(ViewObject, writable), READONLY, NULL},
    {"guard", T_OBJECT, offsetof(ViewObject, guard), READONLY, NULL},
    {"exports", T_PYSSIZET, offsetof(ViewObject, exports), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMappingMethods View_as_mapping = {
    .mp_length = View_length,
    .mp_subscript = View_subscript,
    .mp_ass_subscript = View_ass_subscript,
};

static PySequenceMethods View_as_sequence = {
    .sq_length = View_length,
};

static PyBufferProcs View_as_buffer = {
    .bf_getbuffer = View_getbuffer,
    .bf_releasebuffer = View_releasebuffer,
};

PyTypeObject View_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.View",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = View_dealloc,
    .tp_repr = View_repr,
    .tp_as_sequence = &View_as_sequence,
    .tp_as_mapping = &View_as_mapping,
    .tp_as_buffer = &View_as_buffer,
    .tp_getattro = View_getattro,
    .tp_setattro = View_setattro,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Access to a region, valid only while its guard is active on this thread.",
    .tp_methods = View_methods,
    .tp_members = View_members,
    .tp_getset = View_getset,
};
